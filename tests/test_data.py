"""Data sources and batching, without Ray: Parquet (with CIFAR-100's 100 fine labels), torchvision,
the embedded digits; chunks that depend only on (seed, epoch, batch); and the two augmentations
(the paper's 2-pixel jitter, the reference code's crop/flip/brightness/contrast) pixel by pixel."""
import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ray_al.config import DataConfig
from ray_al.core.batches import augment, epoch_chunks
from ray_al.data.datasets import load_dataset
from ray_al.errors import DataError
from tests.helpers import dataset_dir, write_parquet


def test_digits_is_the_embedded_default():
    ds = load_dataset(DataConfig())
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert abs(float(ds.train_x.mean())) < 1e-4  # normalised with the training statistics


def test_parquet_round_trip_and_cache(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 30)
    write_parquet(tmp_path / "d", "train", imgs[:20], labels[:20], shards=2)
    write_parquet(tmp_path / "d", "test", imgs[20:], labels[20:])
    cfg = DataConfig(source="parquet", path=str(tmp_path / "d"), normalize=False, cache_dir=str(tmp_path / "c"))
    ds = load_dataset(cfg)
    assert ds.input_shape == (3, 6, 6) and len(ds.train_y) == 20
    assert torch.equal((ds.train_x * 255).round().byte(), torch.from_numpy(imgs[:20]).permute(0, 3, 1, 2))
    assert list((tmp_path / "c").glob("*.npz"))
    assert torch.equal(load_dataset(cfg).train_x, ds.train_x)  # from the cache


def test_bad_data_is_named(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(DataConfig(source="parquet", path=str(tmp_path / "missing")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "bad" / "test-00000-of-00001.parquet").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        load_dataset(DataConfig(source="parquet", path=str(tmp_path / "bad"), cache_dir=str(tmp_path / "c")))
    with pytest.raises(DataError, match="torchvision mnist not found"):
        load_dataset(DataConfig(source="torchvision", name="mnist", path=str(tmp_path / "tv")))


def test_real_mnist_parquet():
    ds = load_dataset(DataConfig(source="parquet", path=str(dataset_dir("mnist")), limit_test=100))
    assert ds.input_shape == (1, 28, 28) and len(ds.train_y) == 60000 and len(ds.test_y) == 100
    assert torch.bincount(ds.train_y).tolist()[:3] == [5923, 6742, 5958]  # the dataset's README


def test_chunks_depend_only_on_seed_epoch_and_batch():
    x, y = torch.randn(100, 1, 4, 4), torch.arange(100)
    a = list(epoch_chunks(x, y, 8, 3, epoch=1, seed=0, aug="jitter"))
    b = list(epoch_chunks(x, y, 8, 5, epoch=1, seed=0, aug="jitter"))
    assert [c.x.shape[0] for c in a] == [3, 3, 3, 3]  # 12 full batches, the partial one dropped
    assert torch.equal(torch.cat([c.x for c in a]), torch.cat([c.x for c in b]))
    resumed = list(epoch_chunks(x, y, 8, 3, epoch=1, seed=0, aug="jitter", start_batch=5))
    assert torch.equal(torch.cat([c.y for c in resumed]), torch.cat([c.y for c in a])[5:])
    assert resumed[0].first_step == 12 + 5
    other = list(epoch_chunks(x, y, 8, 3, epoch=2, seed=0))
    assert not torch.equal(torch.cat([c.y for c in a]), torch.cat([c.y for c in other]))
    seen = torch.cat([c.y.flatten() for c in a])
    assert len(set(seen.tolist())) == 96  # every sample at most once per epoch


def test_augmentations_shift_flip_and_keep_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float).reshape(2, 3, 32, 32)
    jit = augment(x, "jitter", g)
    assert jit.shape == x.shape and not torch.equal(jit, x)
    # a 2-pixel shift: every row of the result is a (zero-padded) shift of an input row
    assert (jit[0, 0, 5, 2:30].unsqueeze(0) == x[0, 0, 3:8].unfold(-1, 28, 1).reshape(-1, 28)).all(1).any()
    cf = augment(x, "crop_flip", torch.Generator().manual_seed(1))
    assert cf.shape == x.shape and torch.isfinite(cf).all()


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


def test_validation_split_is_seeded_disjoint_and_reported(tmp_path):
    """data.val_fraction holds out a seeded share of the training split; runs report val_acc on it."""
    from ray_al.data.datasets import hold_out
    from ray_al.run.loop import train
    from tests.helpers import tiny_config
    x, y = np.arange(100), np.arange(100) % 10
    tr_x, tr_y, va_x, va_y = hold_out(x, y, 0.25)
    assert len(va_x) == 25 and sorted([*tr_x, *va_x]) == list(range(100)) and (tr_y == tr_x % 10).all()
    assert (hold_out(x, y, 0.25)[2] == va_x).all() and (np.diff(va_x) > 0).all()  # seeded, order kept
    full = load_dataset(DataConfig())
    held = load_dataset(DataConfig(val_fraction=0.25))
    assert len(held.train_x) + len(held.val_x) == len(full.train_x) and len(held.val_x) == round(0.25 * 1437)
    assert held.test_x.shape == full.test_x.shape
    with pytest.raises(Exception, match=r"data.val_fraction must be in \[0, 1\)"):
        tiny_config(tmp_path, data={"val_fraction": 1.0})
    result = train(tiny_config(tmp_path, train={"trainer": "al_local"}, data={"val_fraction": 0.2}), log=lambda s: None)
    assert {"val_acc", "val_exit_1", "val_exit_2", "test_acc"} <= set(result.final)
