"""data.loader=ray_data: the training split streams from Parquet shards through Ray Data into block 1.

    ray.data.read_parquet(train-*.parquet) -> decode PNG + normalise (Ray Data tasks)
        -> ChunkReader actor: K batches of B, stacked [K, B, C, H, W] -> ObjectRef -> BlockActor 1

The driver holds ObjectRefs only: chunks go from the reader's process through the object store
to block 1, never through the driver, so a training set larger than the driver's memory is fine.
Per epoch the reader iterates the dataset once with `drop_last`, so every sample is seen at most
once and, when the batch size divides the split, exactly once (the in-memory loader drops the
same remainder). Order: shards in random order, then a local shuffle buffer seeded by
(seed, epoch); this is not the in-memory loader's order, and Ray Data's task timing can change
which rows share a buffer, so this path is not bitwise reproducible (the in-memory loader is).
The test split is small and is loaded into the driver for evaluation, as in the default loader.
Checkpoints, resume and block-loss recovery run only with the in-memory loader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import torch

from ray_al.batches import Chunk, augment, batch_generator, epoch_seed
from ray_al.config import Config
from ray_al.data import _load_split, _parquet_files, decode_png, normalise, to_float
from ray_al.errors import ConfigError, DataError
from ray_al.session import connect

DATA_TASK_CPUS = 0.25  # decode tasks must run beside blocks that may hold every CPU


def _decode(batch, mean: np.ndarray | None, std: np.ndarray | None) -> dict:
    """A pyarrow batch of {image{bytes,path}, label} -> float32 [n, C, H, W] (normalised), int64."""
    images = [decode_png(cell) for cell in batch.column("image").to_pylist()]
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if mean is not None:
        x = normalise(x, mean, std)
    return {"x": x, "y": np.asarray(batch.column("label").to_pylist(), dtype=np.int64)}


def _channel_sums(batch) -> dict:
    x = _decode(batch, None, None)["x"].astype(np.float64)
    return {"n": [x.shape[0] * x.shape[2] * x.shape[3]], "s": [x.sum(axis=(0, 2, 3))],
            "ss": [(x * x).sum(axis=(0, 2, 3))]}


class TrainStream:
    """The training split as a Ray Dataset (lazy; nothing is read until an epoch runs)."""

    def __init__(self, cfg: Config):
        folder = Path(cfg.data.path).expanduser()
        files = _parquet_files(folder, "train")
        if not files:
            raise DataError(f"no train-*.parquet files in {folder}")
        self.files = [str(f) for f in files]
        self.raw = ray.data.read_parquet(self.files, num_cpus=DATA_TASK_CPUS).select_columns(["image", "label"])
        self.rows = self.raw.count()  # from the Parquet footers
        self.mean = self.std = None
        if cfg.data.normalize:  # one pass over the split for per-channel mean and std (as the default loader)
            parts = self.raw.map_batches(_channel_sums, batch_format="pyarrow", num_cpus=DATA_TASK_CPUS).take_all()
            n = sum(p["n"] for p in parts)
            s, ss = sum(np.asarray(p["s"]) for p in parts), sum(np.asarray(p["ss"]) for p in parts)
            self.mean = (s / n).astype(np.float32)
            self.std = np.sqrt(np.maximum(ss / n - (s / n) ** 2, 1e-12)).astype(np.float32)
        mean, std = self.mean, self.std
        self.decoded = self.raw.map_batches(lambda b: _decode(b, mean, std), batch_format="pyarrow",
                                            num_cpus=DATA_TASK_CPUS)


@ray.remote(num_cpus=0)
class ChunkReader:
    """Pulls decoded batches from the Ray Dataset and hands out chunks of K batches.
    Sync actor: chunk requests are served in submission order."""

    def __init__(self, dataset, batch_size: int, chunk_size: int, seed: int, aug: str):
        self.dataset, self.batch_size, self.chunk_size = dataset, batch_size, chunk_size
        self.seed, self.aug, self.batches, self.epoch, self.batch = seed, aug, None, 0, 0

    def start_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.seed, epoch)
        ds = self.dataset.randomize_block_order(seed=seed)
        self.batches = iter(ds.iter_torch_batches(batch_size=self.batch_size, drop_last=True,
                                                  local_shuffle_buffer_size=8 * self.batch_size,
                                                  local_shuffle_seed=seed))
        self.epoch, self.batch = epoch, 0

    def next_chunk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(k):
            b = next(self.batches)
            xs.append(augment(b["x"], self.aug, batch_generator(self.seed, self.epoch, self.batch)))
            ys.append(b["y"])
            self.batch += 1
        return torch.stack(xs), torch.stack(ys)


class RayDataSource:
    """Chunks of the training split as ObjectRefs made by a ChunkReader; the test split in memory."""

    checkpoints = False  # the stream's position cannot be restored

    def __init__(self, cfg: Config):
        connect(cfg.ray)
        ctx = ray.data.DataContext.get_current()  # datasets carry this context to the reader
        ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
        self.stream = TrainStream(cfg)
        folder = Path(cfg.data.path).expanduser()
        te_x, te_y, names = _load_split(folder, "test", cfg.data.cache_dir)
        self.test_x, self.test_y = to_float(te_x), torch.from_numpy(te_y)
        if self.stream.mean is not None:
            self.test_x = normalise(self.test_x, torch.from_numpy(self.stream.mean), torch.from_numpy(self.stream.std))
        self.num_classes = len(names) or int(te_y.max()) + 1
        self.input_shape = tuple(self.test_x.shape[1:])
        self.train_size = self.stream.rows
        self.batch_size, self.chunk_size = cfg.data.batch_size, cfg.train.chunk_size
        self.n_batches = self.train_size // self.batch_size
        self.description = (f"data: {folder.name} via Ray Data, train {self.train_size} rows in "
                            f"{len(self.stream.files)} shard(s) (streamed), test {tuple(self.test_x.shape)} "
                            f"{self.num_classes} classes")
        self.reader = ChunkReader.remote(self.stream.decoded, self.batch_size, self.chunk_size, cfg.train.seed,
                                         cfg.data.augment)

    def chunks(self, epoch: int, start_batch: int = 0) -> Iterator[Chunk]:
        if start_batch:
            raise ConfigError("the Ray Data loader cannot start mid-epoch (use data.loader=memory to resume)")
        ray.get(self.reader.start_epoch.remote(epoch))
        for first in range(0, self.n_batches, self.chunk_size):
            size = min(self.chunk_size, self.n_batches - first)
            yield Chunk(epoch * self.n_batches + first, None, None, ref=self.reader.next_chunk.remote(size))

    def close(self) -> None:
        ray.kill(self.reader)
