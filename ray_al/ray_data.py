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

import io
import json
import time
from pathlib import Path

import numpy as np
import ray
import torch

from ray_al.batches import augment
from ray_al.config import Config, save_config
from ray_al.data import _load_split, _parquet_files
from ray_al.errors import ConfigError, DataError

DATA_TASK_CPUS = 0.25  # decode tasks must run beside blocks that may hold every CPU


def _decode(batch, mean: np.ndarray | None, std: np.ndarray | None) -> dict:
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
        self.seed, self.aug, self.batches, self.epoch, self.chunk = seed, aug, None, 0, 0

    def start_epoch(self, epoch: int) -> None:
        ds = self.dataset.randomize_block_order(seed=self.seed * 100_003 + epoch)
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


def train_streaming(cfg: Config, log, on_epoch=None, keep_trainer: bool = False, resume_dir=None):
    """run.train for data.loader=ray_data: same run folder, records and log lines."""
    from ray_al.pipeline import connect
    from ray_al.run import Progress, RunResult, format_record, make_trainer, prepare_run_dir

    check(cfg, resume_dir)
    connect(cfg.ray)
    ctx = ray.data.DataContext.get_current()  # datasets carry this context to the reader
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    stream = TrainStream(cfg)
    folder = Path(cfg.data.path).expanduser()
    te_x, te_y, names = _load_split(folder, "test", cfg.data.cache_dir)
    test_x = torch.from_numpy(np.ascontiguousarray(te_x)).float().div_(255)
    if stream.mean is not None:
        test_x = (test_x - torch.from_numpy(stream.mean)[None, :, None, None]) / \
            torch.from_numpy(stream.std)[None, :, None, None]
    test_y = torch.from_numpy(te_y)
    num_classes = len(names) or int(te_y.max()) + 1
    b, k = cfg.data.batch_size, cfg.train.chunk_size
    n_batches = stream.rows // b
    if n_batches == 0:
        raise DataError(f"{stream.rows} training samples do not fill one batch of {b}")
    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    log(f"data: {folder.name} via Ray Data, train {stream.rows} rows in {len(stream.files)} shard(s) (streamed), "
        f"test {tuple(test_x.shape)} {num_classes} classes")
    if cfg.checkpoint.enabled:
        log("checkpoints: off with data.loader=ray_data (use the in-memory loader to checkpoint and resume)")
    trainer = make_trainer(cfg, tuple(test_x.shape[1:]), num_classes, cfg.train.epochs * n_batches)
    reader = ChunkReader.remote(stream.decoded, b, k, cfg.train.seed, cfg.data.augment)
    result = RunResult(run_dir)
    try:
        for line in trainer.describe():
            log(line)
        if cfg.model.target_warmup_steps:
            from ray_al.target_path import warm_up
            warm_up(trainer, cfg.model, num_classes, b, k, cfg.train.seed, log)
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
