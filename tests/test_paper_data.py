"""CIFAR data paths of the paper: CIFAR-100's 100 fine labels from Parquet and torchvision, and the
two augmentations (the paper's 2-pixel jitter, the reference code's crop/flip/brightness/contrast)
checked pixel by pixel."""
import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ray_al.batches import augment, epoch_chunks
from ray_al.config import DataConfig
from ray_al.data import load_dataset
from ray_al.errors import DataError


def _shifts(x, pad):
    """Every shifted copy (dy, dx in -pad..pad, zero fill) of images x [n, C, H, W], and their offsets."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return {(dy, dx): padded[..., dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


def test_jitter_is_a_shift_of_at_most_two_pixels_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    out = augment(x, "jitter", torch.Generator().manual_seed(1))
    shifts = _shifts(x, 2)
    used = set()
    for i in range(len(x)):
        match = [s for s, img in shifts.items() if torch.equal(img[i], out[i])]  # all channels alike
        assert len(match) == 1, f"image {i} is not a 2-pixel shift of its input"
        used.add(match[0])
    assert len(used) > 4  # shifts vary between images


def test_crop_flip_is_a_4_pixel_crop_maybe_flipped_then_affine_in_brightness():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(2))
    shifts = _shifts(x, 4)
    flips = 0
    for i in range(len(x)):
        found = None
        for s, img in shifts.items():
            for flip in (False, True):
                cand = img[i].flip(-1) if flip else img[i]
                # out = (cand - mean) * contrast + mean + brightness: affine in cand with one scale
                a = torch.stack([cand.flatten(), torch.ones(cand.numel())], 1)
                coef = torch.linalg.lstsq(a, out[i].flatten()[:, None]).solution
                if (a @ coef - out[i].flatten()[:, None]).abs().max() < 1e-4:
                    found = (s, flip, float(coef[0]))
        assert found, f"image {i}: no crop/flip explains it"
        assert 0.8 - 1e-4 <= found[2] <= 1.2 + 1e-4  # contrast factor
        flips += found[1]
    assert 0 < flips < len(x)


def test_augmented_chunks_keep_each_image_with_its_label():
    y = torch.arange(64) % 10
    x = y.float()[:, None, None, None].expand(64, 3, 32, 32).clone() + 1  # image value = label + 1
    for aug in ("none", "jitter"):
        for chunk in epoch_chunks(x, y, 8, 2, epoch=0, seed=0, aug=aug):
            centre = chunk.x[..., 16, 16].mean(-1)  # [K, B]: never touched by the zero padding
            assert torch.equal(centre, chunk.y.float() + 1)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_cifar100_parquet(folder, n_train=120, n_test=40):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = np.arange(n) % 100
        table = pa.table({"img": [{"bytes": _png(im), "path": None} for im in images],
                          "fine_label": fine, "coarse_label": fine // 5})
        table = table.rename_columns(["image", "fine_label", "coarse_label"])
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return folder


def test_cifar100_parquet_uses_the_100_fine_labels(tmp_path):
    folder = _write_cifar100_parquet(tmp_path / "cifar100")
    data = load_dataset(DataConfig(source="parquet", path=str(folder), cache_dir=str(tmp_path / "cache")))
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert torch.equal(data.train_y, torch.arange(120) % 100)
    # per-channel normalisation with the training split's statistics
    assert torch.allclose(data.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(data.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_parquet_without_a_label_column_is_a_one_line_error(tmp_path):
    folder = tmp_path / "nolabel"
    folder.mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"image": [{"bytes": _png(np.zeros((4, 4), np.uint8)), "path": None}],
                                 "target": [0]}), folder / f"{split}-0.parquet")
    with pytest.raises(DataError, match="no 'label' or 'fine_label' column"):
        load_dataset(DataConfig(source="parquet", path=str(folder), cache_dir=str(tmp_path / "cache")))


def test_torchvision_cifar100_gives_fine_labels(tmp_path, monkeypatch):
    """torchvision's own CIFAR-100 class reads the pickles; only its md5 check is bypassed for the fake files."""
    import torchvision.datasets as tvd

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 50), ("test", 20)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(99, 99 - n, -1)),
                 "coarse_labels": [0] * n}
        (root / name).write_bytes(pickle.dumps(entry))
    (root / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                                              "coarse_label_names": [f"s{i}" for i in range(20)]}))
    monkeypatch.setattr(tvd.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: True)
    data = load_dataset(DataConfig(source="torchvision", name="cifar100", path=str(tmp_path)))
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert data.train_y[:3].tolist() == [99, 98, 97] and data.class_names[5] == "c5"


def test_limits_sample_every_class_of_a_sorted_split(tmp_path):
    """CIFAR-10's Parquet test split is sorted by class: the first 1000 are all airplanes."""
    folder = tmp_path / "sorted"
    folder.mkdir()
    for split, n in (("train", 200), ("test", 200)):
        labels = np.repeat(np.arange(10), n // 10)  # sorted by class
        table = pa.table({"image": [{"bytes": _png(np.full((4, 4), i, np.uint8)), "path": None} for i in range(n)],
                          "label": labels})
        pq.write_table(table, folder / f"{split}-0.parquet")
    cfg = DataConfig(source="parquet", path=str(folder), cache_dir=str(tmp_path / "c"), limit_train=50,
                     limit_test=40, normalize=False)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert len(a.train_y) == 50 and len(a.test_y) == 40
    assert len(a.train_y.unique()) == 10 and len(a.test_y.unique()) >= 8
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)  # the same subset every time
    # each image stays with its label (image value i belongs to sample i, label i // 20)
    idx = (a.train_x[:, 0, 0, 0] * 255).round().long()
    assert torch.equal(a.train_y, idx // 20) and bool((idx.diff() > 0).all())
