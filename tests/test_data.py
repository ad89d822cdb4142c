"""Data sources and batching, without Ray."""
import io

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
from tests.conftest import dataset_dir


def write_parquet(folder, split, images, labels, shards=1):
    folder.mkdir(parents=True, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(len(labels)), shards)):
        cells = []
        for i in idx:
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        table = pa.table({"image": cells, "label": pa.array(labels[idx], pa.int64())})
        pq.write_table(table, folder / f"{split}-{k:05d}-of-{shards:05d}.parquet")


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


def test_validation_split_is_seeded_disjoint_and_reported(tmp_path):
    """data.val_fraction holds out a seeded share of the training split; runs report val_acc on it."""
    from ray_al.data import hold_out
    from ray_al.run import train
    from tests.conftest import tiny_config
    x, y = np.arange(100), np.arange(100) % 10
    tr_x, tr_y, va_x, va_y = hold_out(x, y, 0.25)
    assert len(va_x) == 25 and sorted([*tr_x, *va_x]) == list(range(100)) and (tr_y == tr_x % 10).all()
    assert (hold_out(x, y, 0.25)[2] == va_x).all() and (np.diff(va_x) > 0).all()  # seeded, order kept
    full = load_dataset(DataConfig())
    held = load_dataset(DataConfig(val_fraction=0.25))
    assert len(held.train_x) + len(held.val_x) == len(full.train_x) and len(held.val_x) == round(0.25 * 1437)
    assert held.test_x.shape == full.test_x.shape
    with pytest.raises(Exception, match="data.val_fraction must be below 1"):
        tiny_config(tmp_path, data={"val_fraction": 1.0})
    result = train(tiny_config(tmp_path, train={"trainer": "al_local"}, data={"val_fraction": 0.2}), log=lambda s: None)
    assert {"val_acc", "val_exit_1", "val_exit_2", "test_acc"} <= set(result.final)
