"""data.loader=ray_data: Parquet shards streamed by Ray Data into block 1, each sample once per epoch."""
import numpy as np
import pytest
import ray
import torch

from ray_al.config import config_from_dict
from ray_al.errors import ConfigError
from ray_al.pipeline.ray_data import ChunkReader, TrainStream
from ray_al.run.loop import train
from tests.helpers import dataset_dir, write_parquet


def _images(n: int) -> np.ndarray:
    """Grey 6x6 images whose first two pixels spell the sample's index; label = index % 4."""
    idx = np.arange(n)
    images = np.zeros((n, 6, 6), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = idx % 256, idx // 256
    images[:, 2:, 2:] = (idx % 4 * 60)[:, None, None]  # learnable from the label
    return images


def make_folder(tmp_path, n_train: int, shards: int = 3):
    idx, images = np.arange(n_train), _images(n_train)
    write_parquet(tmp_path / "data", "train", images, idx % 4, shards=shards)
    write_parquet(tmp_path / "data", "test", images[:40], idx[:40] % 4)
    return tmp_path / "data"


def cfg_for(folder, tmp_path, **train):
    return config_from_dict({
        "data": {"source": "parquet", "path": str(folder), "loader": "ray_data", "batch_size": 8,
                 "normalize": False, "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "mlp", "d": 16}, "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "chunk_size": 3, "threads": 1, "log_every_s": 0, **train},
        "ray": {"num_cpus_per_block": 0.5}, "run_dir": str(tmp_path / "runs"), "name": "stream"})


def epoch_indices(stream, batch_size, chunk_size, epoch, n_batches):
    """Run one epoch of a reader; undo the normalisation and read each sample's index from its pixels."""
    reader = ChunkReader.remote(stream, batch_size, chunk_size, 0, "none")
    try:
        ray.get(reader.start_epoch.remote(epoch))
        seen = []
        for first in range(0, n_batches, chunk_size):
            x, y = ray.get(reader.next_chunk.remote(min(chunk_size, n_batches - first)))
            assert x.shape[1:] == (batch_size, 1, 6, 6) and y.shape == x.shape[:2]
            px = (x[:, :, 0, 0, :2] * float(stream.std[0]) + float(stream.mean[0])) * 255
            ids = px[..., 0].round().long() + 256 * px[..., 1].round().long()
            assert torch.equal(y, ids % 4)  # labels travel with their images
            seen += ids.flatten().tolist()
        return seen
    finally:
        ray.kill(reader)


def test_every_sample_once_per_epoch_in_a_new_order_normalised(ray_cluster, tmp_path):
    folder = make_folder(tmp_path, 96)
    cfg = cfg_for(folder, tmp_path)
    cfg.data.normalize = True
    stream = TrainStream(cfg)
    assert stream.rows == 96
    pixels = np.stack([np.asarray(i, np.float64) for i in _images(96)]) / 255  # the training split's statistics
    assert np.allclose(stream.mean, pixels.mean(), atol=1e-6) and np.allclose(stream.std, pixels.std(), atol=1e-5)
    first, second = (epoch_indices(stream, 8, 5, e, 12) for e in (0, 1))
    assert sorted(first) == sorted(second) == list(range(96))
    assert first != second


def test_training_streams_through_the_pipeline(ray_cluster, tmp_path):
    folder = make_folder(tmp_path, 96)
    result = train(cfg_for(folder, tmp_path, epochs=3), log=lambda s: None, keep_trainer=True)
    try:
        assert [r["epoch"] for r in result.history] == [1, 2, 3]
        assert [s["step_count"] for s in result.trainer.state_dicts()] == [36, 36]  # 3 epochs x 12 batches, each block
        first, last = result.history[0], result.history[-1]
        assert last["b1_bridge_loss"] < first["b1_bridge_loss"] and last["b2_ae_loss"] < first["b2_ae_loss"]
    finally:
        result.trainer.close()
    assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == 3


def test_bad_combinations_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.loader=ray_data streams Parquet"):
        config_from_dict({"data": {"loader": "ray_data"}})
    with pytest.raises(ConfigError, match="is not one of memory, ray_data"):
        config_from_dict({"data": {"loader": "torch"}})


def test_real_mnist_streams(ray_cluster, tmp_path):
    folder = dataset_dir("mnist")
    cfg = cfg_for(folder, tmp_path)
    stream = TrainStream(cfg)
    assert stream.rows == 60000
    reader = ChunkReader.remote(stream, 32, 2, 0, "none")
    ray.get(reader.start_epoch.remote(0))
    x, y = ray.get(reader.next_chunk.remote(2), timeout=120)
    ray.kill(reader)
    assert x.shape == (2, 32, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1 and y.max() <= 9
