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
`data.limit_train=n` keeps the same n rows as the in-memory loader (a fixed-seed draw).
The test split is small and is loaded into the driver for evaluation, as in the default loader.
Checkpoints, resume and block-loss recovery run only with the in-memory loader.

Resources: the shard tasks run in a placement group of their own (`DATA_CPUS`), made before the
blocks', and the blocks' default CPU share leaves it free, so blocks can never starve the reader
(they did: `read_parquet` also starts a listing task that needs a whole free CPU). A run that
waits for CPUs says so every few seconds and stops after `ray.placement_timeout_s`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_al.batches import augment
from ray_al.config import Config, save_config
from ray_al.data import _label_column, _load_split, _parquet_files, _subset, subset_indices
from ray_al.errors import ConfigError, DataError
from ray_al.labels import Origin, column_labels, count_classes
from ray_al.models import block_count
from ray_al.placement import cpus_per_block, wait_for_group

DATA_TASK_CPUS = 0.25  # per shard task
DATA_CPUS = 0.5        # reserved for those tasks: two at a time
ROWS_PER_READ = 1024   # rows a shard task reads, decodes and yields at a time (one Ray Data block)


def _decode(batch, label: str, mean: np.ndarray | None, std: np.ndarray | None) -> dict:
    """A pyarrow batch of {image{bytes,path}, label} -> float32 [n, C, H, W] (normalised), int64."""
    from PIL import Image

    images = []
    for cell in batch.column("image").to_pylist():
        raw = cell["bytes"] if isinstance(cell, dict) else cell
        img = np.asarray(Image.open(io.BytesIO(raw)))
        images.append(img if img.ndim == 3 else img[:, :, None])
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if mean is not None:
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    return {"x": x, "y": np.asarray(batch.column(label).to_pylist(), dtype=np.int64)}


def _read_shard(unit: dict):
    """The kept rows of one shard, ROWS_PER_READ at a time, as pyarrow record batches (with their label column)."""
    f = unit["file"]
    shard = pq.ParquetFile(f)
    label = _label_column(shard.schema_arrow.names, Path(f))
    keep, start = (np.asarray(unit["keep"]) if not unit["all"] else None), 0
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
        total = sum(counts)
        limit = cfg.data.limit_train
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
        if cfg.data.normalize:  # one pass over the split for per-channel mean and std (as the default loader)
            parts = self._map(self.units, _channel_sums).take_all()
            n = sum(p["n"] for p in parts)
            s, ss = sum(np.asarray(p["s"]) for p in parts), sum(np.asarray(p["ss"]) for p in parts)
            self.mean = (s / n).astype(np.float32)
            self.std = np.sqrt(np.maximum(ss / n - (s / n) ** 2, 1e-12)).astype(np.float32)

    def _map(self, units: list[dict], fn):
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
        self.seed, self.aug, self.batches, self.epoch, self.chunk = seed, aug, None, 0, 0

    def start_epoch(self, epoch: int) -> None:
        ds = self.stream.epoch(self.seed * 100_003 + epoch)
        self.batches = iter(ds.iter_torch_batches(batch_size=self.batch_size, drop_last=True,
                                                  local_shuffle_buffer_size=8 * self.batch_size,
                                                  local_shuffle_seed=self.seed * 100_003 + epoch))
        self.epoch, self.chunk = epoch, 0

    def next_chunk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(k):
            b = next(self.batches)
            xs.append(b["x"])
            ys.append(b["y"])
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 10_007 + self.chunk)
        self.chunk += 1
        x = augment(torch.cat(xs), self.aug, g)
        return x.reshape(k, self.batch_size, *x.shape[1:]).contiguous(), torch.stack(ys)


def check(cfg: Config, resume_dir) -> None:
    if cfg.data.source != "parquet":
        raise ConfigError("data.loader=ray_data reads Parquet shards: set data.source=parquet and data.path")
    if cfg.train.trainer != "al":
        raise ConfigError("data.loader=ray_data feeds the Ray pipeline: set train.trainer=al")
    if resume_dir:
        raise ConfigError("--resume needs the in-memory loader (data.loader=memory)")


def _train_labels(files: list[str]) -> tuple[np.ndarray, Origin]:
    """Every training label, read from the label column alone (cheap), checked like the in-memory loader's."""
    ys, counts = [], []
    for f in files:
        column = pq.read_table(f, columns=[_label_column(pq.read_schema(f).names, Path(f))]).column(0)
        ys.append(column_labels(column, f))
        counts.append((f, len(column)))
    return np.concatenate(ys) if ys else np.zeros(0, np.int64), Origin("train", counts)


def reserve_data_cpus(cfg: Config, log):
    """A placement group for the read and decode tasks, made before the blocks take the CPUs."""
    bundle = {"CPU": DATA_CPUS}
    pg = placement_group([bundle], strategy="PACK")
    wait_for_group(pg, f"the Ray Data reader ({DATA_CPUS} CPU)", cfg.ray.placement_timeout_s, log)
    return pg


def train_streaming(cfg: Config, log, on_epoch=None, keep_trainer: bool = False, resume_dir=None):
    """run.train for data.loader=ray_data: same run folder, records and log lines."""
    from ray_al.pipeline import ALPipeline, connect
    from ray_al.run import prepare_run_dir

    check(cfg, resume_dir)
    folder = Path(cfg.data.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    files = [str(f) for f in _parquet_files(folder, "train")]
    if not files:
        raise DataError(f"no train-*.parquet files in {folder}")
    train_y, train_origin = _train_labels(files)
    te_x, te_y, names, te_origin = _load_split(folder, "test", cfg.data.cache_dir)
    if not len(train_y) or not len(te_y):
        raise DataError(f"the {'train' if not len(train_y) else 'test'} split in {folder} has no rows")
    num_classes = count_classes(cfg.data.num_classes, names, [(train_y, train_origin), (te_y, te_origin)])
    if cfg.data.limit_test:
        te_x, te_y = _subset(te_x, te_y, cfg.data.limit_test)
    b = cfg.data.batch_size
    rows = min(len(train_y), cfg.data.limit_train or len(train_y))
    n_batches = rows // b
    if n_batches == 0:
        raise DataError(f"{rows} training samples do not fill one batch of {b}")
    connect(cfg.ray)
    # in a Tune trial the trial's placement group holds the blocks and Ray Data runs beside it
    data_pg = None if get_current_placement_group() else reserve_data_cpus(cfg, log)
    try:
        remote_args = {"scheduling_strategy": PlacementGroupSchedulingStrategy(data_pg)} if data_pg else {}
        ctx = ray.data.DataContext.get_current()  # datasets carry this context to the reader
        ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
        stream = TrainStream(cfg, remote_args)
        test_x = torch.from_numpy(np.ascontiguousarray(te_x)).float().div_(255)
        if stream.mean is not None:
            test_x = (test_x - torch.from_numpy(stream.mean)[None, :, None, None]) / \
                torch.from_numpy(stream.std)[None, :, None, None]
        test_y = torch.from_numpy(te_y)
        input_shape = tuple(test_x.shape[1:])
        block_cfg = cfg
        if data_pg and cfg.ray.num_cpus_per_block is None:  # the blocks' default share leaves the reader's CPUs
            n = block_count(cfg.model, input_shape, num_classes)
            block_cfg = dataclasses.replace(cfg, ray=dataclasses.replace(
                cfg.ray, num_cpus_per_block=cpus_per_block(cfg.ray, n, reserved=DATA_CPUS)))
        run_dir = prepare_run_dir(cfg)
        save_config(cfg, run_dir / "config.yaml")
        log(f"data: {folder.name} via Ray Data, train {rows} rows in {len(stream.files)} shard(s) (streamed), "
            f"test {tuple(test_x.shape)} {num_classes} classes")
        if cfg.checkpoint.enabled:
            log("checkpoints: off with data.loader=ray_data (use the in-memory loader to checkpoint and resume)")
        trainer = ALPipeline(block_cfg, input_shape, num_classes, cfg.train.epochs * n_batches)
        return _run_epochs(cfg, trainer, stream, test_x, test_y, n_batches, run_dir, log, on_epoch, keep_trainer)
    finally:
        if data_pg is not None:
            remove_placement_group(data_pg)


def _run_epochs(cfg, trainer, stream, test_x, test_y, n_batches, run_dir, log, on_epoch, keep_trainer):
    from ray_al.run import Progress, RunResult, format_record

    b, k = cfg.data.batch_size, cfg.train.chunk_size
    reader = ChunkReader.remote(stream, b, k, cfg.train.seed, cfg.data.augment)
    result = RunResult(run_dir)
    try:
        for line in trainer.describe():
            log(line)
        for epoch in range(cfg.train.epochs):
            ray.get(reader.start_epoch.remote(epoch))
            progress = Progress(epoch + 1, cfg.train.epochs, n_batches, b, log, cfg.train.log_every_s)
            sizes = [min(k, n_batches - first) for first in range(0, n_batches, k)]
            start = time.perf_counter()
            trainer.train_epoch((_RefChunk(reader.next_chunk.remote(size)) for size in sizes), progress)
            seconds = time.perf_counter() - start
            record = {"epoch": epoch + 1, "epochs": cfg.train.epochs, "step": (epoch + 1) * n_batches,
                      "train_time_s": seconds, "samples_per_s": n_batches * b / seconds,
                      **progress.summary(), **trainer.evaluate(test_x, test_y)}
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log(format_record(record))
            result.history.append(record)
            if on_epoch:
                on_epoch(record)
        (run_dir / "summary.json").write_text(json.dumps({"final": result.final, "run_dir": str(run_dir),
                                                          "loader": "ray_data"}, indent=1))
        log(f"run folder: {run_dir}")
    except BaseException:
        trainer.close()
        raise
    finally:
        ray.kill(reader)
    if keep_trainer:
        result.trainer = trainer
    else:
        trainer.close()
    return result


class _RefChunk:
    """A chunk still in the object store: ALPipeline.submit hands `ref` (of (x, y)) to block 1."""

    def __init__(self, ref):
        self.ref = ref
