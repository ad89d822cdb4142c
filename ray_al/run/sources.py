"""Where a run's chunks come from: two loaders behind one interface, so the run loop never forks.

- `MemorySource` (data.loader=memory): the whole dataset as tensors in this process; chunks depend
  only on (seed, epoch, batch index), so a run resumes mid-epoch bitwise exactly.
- `RayDataSource` (data.loader=ray_data, ray_data.py): Parquet shards streamed by Ray Data; chunks
  are ObjectRefs that go to block 1 without passing through this process; no checkpoints.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from ray_al.config import Config
from ray_al.core.batches import Chunk, batches_per_epoch, epoch_chunks, step_batch_size
from ray_al.data.datasets import Dataset, load_dataset
from ray_al.data.preprocess import Preprocess


class ChunkSource(Protocol):
    input_shape: tuple
    num_classes: int
    train_size: int          # training samples
    n_batches: int           # full batches per epoch
    test_x: torch.Tensor     # the test split, normalised as the training split
    test_y: torch.Tensor
    val_x: torch.Tensor | None  # data.val_fraction of the training split, normalised likewise (None: none)
    val_y: torch.Tensor | None
    preprocess: Preprocess   # raw inputs -> model inputs, saved in the run folder for prediction
    checkpoints: bool        # whether a run on this source can save and resume
    description: str         # one line for the log
    resolved: dict           # settings the source resolved ({"ray.num_cpus_per_block": 0.5}), for the run's config

    def chunks(self, epoch: int, start_batch: int = 0) -> Iterator[Chunk]:
        """The epoch's chunks of K batches from batch `start_batch` on, lazily, in order."""

    def close(self) -> None:
        """Release whatever the source started."""


class MemorySource:
    checkpoints = True

    def __init__(self, cfg: Config, data: Dataset | None = None):
        self.data = data = data or load_dataset(cfg.data)
        self.cfg, self.resolved = cfg, {}
        self.input_shape, self.num_classes = data.input_shape, data.num_classes
        self.test_x, self.test_y = data.test_x, data.test_y
        self.val_x, self.val_y = data.val_x, data.val_y
        self.preprocess = Preprocess.of(data, cfg.data.image_size)
        self.train_size = len(data.train_x)
        self.n_batches = batches_per_epoch(self.train_size, step_batch_size(cfg))
        val = f" val {tuple(data.val_x.shape)}" if data.val_x is not None else ""
        self.description = (f"data: {data.name} train {tuple(data.train_x.shape)}{val} test {tuple(data.test_x.shape)} "
                            f"{data.num_classes} classes")

    def chunks(self, epoch: int, start_batch: int = 0) -> Iterator[Chunk]:
        cfg = self.cfg
        return epoch_chunks(self.data.train_x, self.data.train_y, step_batch_size(cfg), cfg.train.chunk_size, epoch,
                            cfg.train.seed, cfg.data.augment, start_batch)

    def close(self) -> None:
        pass


def open_source(cfg: Config, data: Dataset | None = None) -> ChunkSource:
    """`data`: an already loaded dataset (memory loader only), e.g. one shared by Tune trials."""
    if cfg.data.loader == "ray_data":  # the training split never enters this process
        from ray_al.pipeline.ray_data import RayDataSource
        return RayDataSource(cfg)
    return MemorySource(cfg, data)
