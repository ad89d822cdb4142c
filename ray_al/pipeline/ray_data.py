"""data.loader=ray_data: the training split streams from Parquet shards through Ray Data into block 1.

    one task per shard (Ray Data map): read 1024 rows at a time, decode PNG + normalise, yield
        -> ChunkReader actor: K batches of B, stacked [K, B, C, H, W] -> ObjectRef -> BlockActor 1

The driver holds ObjectRefs only: chunks go from the reader's process through the object store
to block 1, never through the driver, so a training set larger than the driver's memory is fine.
Per epoch the reader iterates the dataset once with `drop_last`, so every sample is seen at most
once and, when the batch size divides the split, exactly once (the in-memory loader drops the
same remainder). Order: shards in random order, then a local shuffle buffer seeded by
(seed, epoch); this is not the in-memory loader's order, and Ray Data's task timing can change
which rows share a buffer, so this path is not bitwise reproducible (the in-memory loader is).
`data.limit_train=n` keeps the same n rows as the in-memory loader (a fixed-seed draw). Labels are
checked as the in-memory loader checks them (ray_al/data/labels.py), from the label column alone.
The test split is small and is loaded into the driver for evaluation, as in the default loader.
Checkpoints, resume and block-loss recovery run only with the in-memory loader.

Resources: the shard tasks run in a placement group of their own (`DATA_CPUS`), made before the
blocks', and the blocks' default CPU share leaves it free, so blocks can never starve the reader
(they did: `read_parquet` also starts a listing task that needs a whole free CPU). A run that
waits for CPUs says so every few seconds and stops after `ray.placement_timeout_s`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_al.config import Config
from ray_al.core.batches import Chunk, augment, batch_generator, epoch_seed
from ray_al.data.datasets import (
    _label_column,
    _load_split,
    _parquet_files,
    _subset,
    decode_png,
    normalise,
    subset_indices,
    to_float,
)
from ray_al.data.labels import Origin, column_labels, count_classes
from ray_al.data.preprocess import Preprocess
from ray_al.errors import ConfigError, DataError
from ray_al.models import block_count
from ray_al.pipeline.placement import cpus_per_block, wait_for_group
from ray_al.pipeline.session import connect, gcs_reachable

DATA_TASK_CPUS = 0.25  # per shard task
DATA_CPUS = 0.5        # reserved for those tasks: two at a time
ROWS_PER_READ = 1024   # rows a shard task reads, decodes and yields at a time (one Ray Data block)


def _decode(batch, label: str, mean: np.ndarray | None, std: np.ndarray | None) -> dict:
    """A pyarrow batch of {image{bytes,path}, label} -> float32 [n, C, H, W] (normalised), int64."""
    images = [decode_png(cell) for cell in batch.column("image").to_pylist()]
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if mean is not None:
        x = normalise(x, mean, std)
    return {"x": x, "y": np.asarray(batch.column(label).to_pylist(), dtype=np.int64)}


def _read_shard(unit: dict):
    """The kept rows of one shard, ROWS_PER_READ at a time, as pyarrow record batches (with their label column)."""
    f = unit["file"]
    shard = pq.ParquetFile(f)
    label = _label_column(shard.schema_arrow.names, Path(f))
    keep, start = (None if unit["all"] else np.asarray(unit["keep"])), 0
    for batch in shard.iter_batches(batch_size=ROWS_PER_READ, columns=["image", label]):
        if keep is not None:
            local = keep[(keep >= start) & (keep < start + batch.num_rows)] - start
            start += batch.num_rows
            if not len(local):
                continue
            batch = batch.take(local)
        yield batch, label


def _decode_shards(units, mean: np.ndarray | None, std: np.ndarray | None):
    for unit in units.to_pylist():
        for batch, label in _read_shard(unit):
            yield _decode(batch, label, mean, std)


def _channel_sums(units):
    for unit in units.to_pylist():
        for batch, label in _read_shard(unit):
            x = _decode(batch, label, None, None)["x"].astype(np.float64)
            yield {"n": [x.shape[0] * x.shape[2] * x.shape[3]], "s": [x.sum(axis=(0, 2, 3))],
                   "ss": [(x * x).sum(axis=(0, 2, 3))]}


def train_labels(files: list[str]) -> tuple[np.ndarray, Origin]:
    """Every training label, read from the label column alone (cheap), checked like the in-memory loader's."""
    ys, counts = [], []
    for f in files:
        column = pq.read_table(f, columns=[_label_column(pq.read_schema(f).names, Path(f))]).column(0)
        ys.append(column_labels(column, f))
        counts.append((f, len(column)))
    return np.concatenate(ys) if ys else np.zeros(0, np.int64), Origin("train", counts)


def quiet_ray_data() -> None:
    """No progress bars and no per-dataset lines on the console, in whichever process runs a dataset: the
    reader actor starts from Ray Data's defaults, not the driver's DataContext, and its bars reached the
    driver's terminal through Ray's log forwarding. Ray Data's own log file (ray-data.log) keeps all of it."""
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = ctx.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console one; its file handler is not a stream
            handler.setLevel(logging.ERROR)


class TrainStream:
    """The training split as shards that Ray Data tasks read and decode (nothing is read until an epoch
    runs, except one pass for the normalisation statistics). No `read_parquet`: its listing task
    asks for a whole CPU outside any placement group."""

    def __init__(self, cfg: Config, remote_args: dict | None = None):
        """remote_args: Ray options for every shard task (the placement group reserved for them)."""
        folder = Path(cfg.data.path).expanduser()
        files = _parquet_files(folder, "train")
        if not files:
            raise DataError(f"no train-*.parquet files in {folder}")
        self.files = [str(f) for f in files]
        counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]  # from the footers
        total, limit = sum(counts), cfg.data.limit_train
        keep = subset_indices(total, limit) if limit and limit < total else None
        self.rows = total if keep is None else len(keep)
        self.units, first = [], 0
        for f, n in zip(self.files, counts):
            local = [] if keep is None else (keep[(keep >= first) & (keep < first + n)] - first).tolist()
            if keep is None or local:
                self.units.append({"file": f, "all": keep is None, "keep": local})
            first += n
        self.args = {"num_cpus": DATA_TASK_CPUS, **(remote_args or {})}
        self.mean = self.std = None
        if cfg.data.normalize and self.units:  # one pass for per-channel mean and std (as the default loader)
            parts = self._map(self.units, _channel_sums).take_all()
            n = sum(p["n"] for p in parts)
            s, ss = sum(np.asarray(p["s"]) for p in parts), sum(np.asarray(p["ss"]) for p in parts)
            self.mean = (s / n).astype(np.float32)
            self.std = np.sqrt(np.maximum(ss / n - (s / n) ** 2, 1e-12)).astype(np.float32)

    def _map(self, units: list[dict], fn):
        quiet_ray_data()
        with warnings.catch_warnings():  # scheduling_strategy has no named parameter yet (Ray 2.60)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
                fn, batch_size=1, batch_format="pyarrow", **self.args)

    def epoch(self, seed: int):
        """The decoded split with its shards in an order drawn from `seed`."""
        order = np.random.default_rng(seed).permutation(len(self.units))
        mean, std = self.mean, self.std
        return self._map([self.units[i] for i in order], lambda units: _decode_shards(units, mean, std))


@ray.remote(num_cpus=0)
class ChunkReader:
    """Pulls decoded batches from the Ray Dataset and hands out chunks of K batches.
    Sync actor: chunk requests are served in submission order."""

    def __init__(self, stream: TrainStream, batch_size: int, chunk_size: int, seed: int, aug: str):
        self.stream, self.batch_size, self.chunk_size = stream, batch_size, chunk_size
        self.seed, self.aug, self.batches, self.epoch, self.batch = seed, aug, None, 0, 0

    def start_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.seed, epoch)
        self.batches = iter(self.stream.epoch(seed).iter_torch_batches(
            batch_size=self.batch_size, drop_last=True, local_shuffle_buffer_size=8 * self.batch_size,
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
    """Chunks of the training split as ObjectRefs made by a ChunkReader; the test split in memory.
    Everything the data can refuse (labels, empty splits, too few rows) is refused before any CPU is
    reserved; then the reader's CPUs are reserved, and the blocks' default share leaves them free."""

    checkpoints = False  # the stream's position cannot be restored

    def __init__(self, cfg: Config, log=print):
        folder = Path(cfg.data.path).expanduser()
        if not folder.is_dir():
            raise DataError(f"dataset folder not found: {folder}")
        files = [str(f) for f in _parquet_files(folder, "train")]
        if not files:
            raise DataError(f"no train-*.parquet files in {folder}")
        train_y, train_origin = train_labels(files)
        te_x, te_y, names, te_origin = _load_split(folder, "test", cfg.data.cache_dir)
        for split, y in (("train", train_y), ("test", te_y)):
            if not len(y):
                raise DataError(f"the {split} split in {folder} has no rows")
        self.num_classes = count_classes(cfg.data.num_classes, names, [(train_y, train_origin), (te_y, te_origin)])
        if cfg.data.limit_test:
            te_x, te_y = _subset(te_x, te_y, cfg.data.limit_test)
        self.batch_size, self.chunk_size = cfg.data.batch_size, cfg.train.chunk_size
        self.train_size = min(len(train_y), cfg.data.limit_train or len(train_y))
        self.n_batches = self.train_size // self.batch_size
        self.input_shape = tuple(te_x.shape[1:])
        connect(cfg.ray)
        # in a Tune trial the trial's placement group holds the blocks and Ray Data runs beside it
        self.data_pg = None if get_current_placement_group() else _reserve_data_cpus(cfg, log)
        self.reader, self.resolved = None, {}
        try:
            if self.data_pg and cfg.ray.num_cpus_per_block is None:
                # resolved here and recorded in the run's config.yaml: the blocks' share beside the reader
                n = block_count(cfg.model, self.input_shape, self.num_classes)
                self.resolved["ray.num_cpus_per_block"] = cpus_per_block(cfg.ray, n, reserved=DATA_CPUS)
            strategy = {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.data_pg)} if self.data_pg else {}
            self.stream = TrainStream(cfg, strategy)
            self.test_x, self.test_y = to_float(te_x), torch.from_numpy(te_y)
            if self.stream.mean is not None:
                self.test_x = normalise(self.test_x, torch.from_numpy(self.stream.mean),
                                        torch.from_numpy(self.stream.std))
            self.val_x = self.val_y = None  # data.val_fraction needs the in-memory loader (config.py says so)
            stats = [None if a is None else [float(v) for v in a] for a in (self.stream.mean, self.stream.std)]
            self.preprocess = Preprocess(list(self.input_shape), *stats, None, list(names))
            self.description = (f"data: {folder.name} via Ray Data, train {self.train_size} rows in "
                                f"{len(self.stream.files)} shard(s) (streamed), test {tuple(self.test_x.shape)} "
                                f"{self.num_classes} classes")
            self.reader = ChunkReader.remote(self.stream, self.batch_size, self.chunk_size, cfg.train.seed,
                                             cfg.data.augment)
        except BaseException:
            self.close()
            raise

    def chunks(self, epoch: int, start_batch: int = 0) -> Iterator[Chunk]:
        if start_batch:
            raise ConfigError("the Ray Data loader cannot start mid-epoch (use data.loader=memory to resume)")
        ray.get(self.reader.start_epoch.remote(epoch))
        for first in range(0, self.n_batches, self.chunk_size):
            size = min(self.chunk_size, self.n_batches - first)
            yield Chunk(epoch * self.n_batches + first, None, None, ref=self.reader.next_chunk.remote(size))

    def close(self) -> None:
        if (self.reader is not None or self.data_pg is not None) and not gcs_reachable():
            self.reader = self.data_pg = None  # the cluster is gone, and with it what we held
        if self.reader is not None:
            ray.kill(self.reader)
            self.reader = None
        if self.data_pg is not None:
            remove_placement_group(self.data_pg)
            self.data_pg = None


def _reserve_data_cpus(cfg: Config, log):
    """A placement group for the shard tasks, made before the blocks take the CPUs."""
    pg = placement_group([{"CPU": DATA_CPUS}], strategy="PACK")
    wait_for_group(pg, f"the Ray Data reader ({DATA_CPUS} CPU)", cfg.ray.placement_timeout_s, log)
    return pg
