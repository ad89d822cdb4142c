"""One training run: data, trainer, epochs, evaluation, metrics and config in a run folder.

The run folder holds `config.yaml` (the resolved config), `metrics.jsonl` (one record per
epoch) and `summary.json`, as in cifar10-airbench where a run keeps its settings beside
its results.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray_al.batches import batches_per_epoch, epoch_chunks
from ray_al import checkpoint as ckpt_lib
from ray_al.config import Config, save_config
from ray_al.data import Dataset, load_dataset
from ray_al.errors import BlockLost, ConfigError, DataError, TrainingError
from ray_al.loggers import check_loggers, console, loss_scalars, make_loggers
from ray_al.models import parameter_counts
from ray_al.provenance import provenance

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    trainer: object = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def make_trainer(cfg: Config, input_shape: tuple, num_classes: int, total_steps: int):
    if cfg.train.trainer == "al":
        from ray_al.pipeline import ALPipeline  # the only trainer that needs Ray
        return ALPipeline(cfg, input_shape, num_classes, total_steps)
    if cfg.train.trainer == "al_local":
        from ray_al.reference import LocalAL
        return LocalAL(cfg, input_shape, num_classes, total_steps)
    from ray_al.bp import BPTrainer
    return BPTrainer(cfg, input_shape, num_classes, total_steps)


def prepare_run_dir(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.model.name}-{cfg.train.trainer}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run_dir).expanduser() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run folder {path} is not writable: {e.strerror or e}") from None
    return path


class Progress:
    """Sums every block's losses over an epoch and prints a line every `interval` seconds."""

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, log: Log, interval: float,
                 loggers=None):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.log, self.interval, self.loggers = log, interval, loggers
        self.done, self.sums = 0, {}
        self.start = self.last = time.perf_counter()

    def __call__(self, stats: list[dict]) -> None:
        k = stats[-1]["steps"]
        self.done += k
        for name, value in loss_scalars(stats).items():
            self.sums[name] = self.sums.get(name, 0.0) + value * k
        if self.loggers:
            self.loggers.log_chunk(stats)
        now = time.perf_counter()
        if self.interval and now - self.last >= self.interval and self.done < self.steps:
            self.last = now
            rate = self.done * self.batch_size / (now - self.start)
            self.log(f"  epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps} "
                     f"{rate:,.0f} samples/s {self._losses()}")

    def summary(self) -> dict:
        return {name: total / max(self.done, 1) for name, total in self.sums.items()}

    def _losses(self) -> str:
        return " ".join(f"{k}={v:.4f}" for k, v in self.summary().items())


def format_record(r: dict) -> str:
    exits = [f"{r[k]:.4f}" for k in sorted(r, key=lambda k: int(k[5:]) if k[5:].isdigit() else 0)
             if k.startswith("exit_")]
    losses = " ".join(f"{k}={v:.4f}" for k, v in r.items() if k.endswith("loss"))
    line = (f"epoch {r['epoch']}/{r['epochs']} train {r['train_time_s']:.1f}s ({r['samples_per_s']:,.0f} samples/s) "
            f"{losses} test_acc={r['test_acc']:.4f}")
    line += f" val_acc={r['val_acc']:.4f}" if "val_acc" in r else ""
    return line + (f" exits=[{' '.join(exits)}]" if len(exits) > 1 else "")


def validation(trainer, data: Dataset) -> dict:
    """Accuracy on the held-out split (data.val_fraction): val_acc (last exit) and val_exit_k."""
    if data.val_x is None:
        return {}
    accs = trainer.evaluate(data.val_x, data.val_y)
    return {("val_acc" if k == "test_acc" else f"val_{k}"): v for k, v in accs.items()}


def describe_run(cfg: Config, data: Dataset, log: Log) -> None:
    counts = parameter_counts(cfg.model, data.input_shape, data.num_classes)
    val = f" validation {tuple(data.val_x.shape)}" if data.val_x is not None else ""
    log(f"data: {data.name} train {tuple(data.train_x.shape)}{val} test {tuple(data.test_x.shape)} "
        f"{data.num_classes} classes")
    log(f"model: {cfg.model.name} trainer={cfg.train.trainer} params: AL total {counts['al_total']:,}, "
        f"AL effective {counts['al_effective']:,}, BP twin {counts['bp']:,}")


def fingerprint(cfg: Config, data: Dataset) -> dict:
    """What a checkpoint must match to be loaded into this run."""
    return {"kind": "bp" if cfg.train.trainer == "bp" else "al", "model": dataclasses.asdict(cfg.model),
            "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "batch_size": cfg.data.batch_size, "seed": cfg.train.seed}


def checkpoint_uri(cfg: Config, run_dir: Path) -> str:
    return f"{cfg.checkpoint.uri.rstrip('/')}/{run_dir.name}" if cfg.checkpoint.uri else str(run_dir)


class Checkpointer:
    """Saves (each block writes its own file, then the manifest) and finds the newest checkpoint."""

    def __init__(self, cfg: Config, run_dir: Path, fp: dict):
        self.cfg, self.uri, self.fp = cfg, checkpoint_uri(cfg, run_dir), fp

    def save(self, trainer, step: int, epoch: int, batch: int) -> None:
        ckpt = ckpt_lib.step_dir(self.uri, step)
        digests = trainer.save_blocks(ckpt)
        manifest = {"step": step, "epoch": epoch, "batch": batch, "time": time.time(), "fingerprint": self.fp,
                    "config": self.cfg.to_dict(), "provenance": provenance(),
                    "blocks": [{"file": f"block-{i + 1}.pt", "sha256": d} for i, d in enumerate(digests)]}
        ckpt_lib.write_manifest(ckpt, manifest, self.cfg.checkpoint.keep)

    def restore(self, trainer) -> dict:
        manifest = ckpt_lib.read_manifest(self.uri)
        ckpt_lib.check_compatible(manifest, self.fp)
        trainer.load_blocks(self.uri, manifest)
        return manifest


def _segments(epoch: int, start_batch: int, n_batches: int, chunk: int, every: int):
    """Split an epoch's batches [start_batch, n_batches) at checkpoint steps (whole chunks)."""
    cuts, first = [], start_batch
    for b in range(start_batch, n_batches, chunk):
        end = min(b + chunk, n_batches)
        if end == n_batches or (every and (epoch * n_batches + end) // every > (epoch * n_batches + b) // every):
            cuts.append((first, end))
            first = end
    return cuts


def _read_history(run_dir: Path, completed_epochs: int) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r["epoch"] <= completed_epochs]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))  # epochs after the checkpoint are redone
    return kept


def train(cfg: Config, log: Log = console, on_epoch: Callable[[dict], None] | None = None,
          data: Dataset | None = None, keep_trainer: bool = False, resume_dir: str | Path | None = None) -> RunResult:
    """Train as configured; `on_epoch` receives each epoch's record (Ray Tune reports from it).
    With `resume_dir`, continue that run from its newest complete checkpoint. The run folder is
    made only once the trainer has started: a failed start (unknown model, no GPU) leaves none."""
    if cfg.data.loader == "ray_data":  # the training split never enters this process
        from ray_al.ray_data import train_streaming
        return train_streaming(cfg, log, on_epoch, keep_trainer, resume_dir)
    check_loggers(cfg)
    data = data or load_dataset(cfg.data)
    n_batches = batches_per_epoch(len(data.train_x), cfg.data.batch_size)
    if n_batches == 0:
        raise DataError(f"{len(data.train_x)} training samples do not fill one batch of {cfg.data.batch_size}")
    fp = fingerprint(cfg, data)
    if resume_dir:  # check before starting any actor: a wrong checkpoint costs nothing
        ckpt_lib.check_compatible(ckpt_lib.read_manifest(checkpoint_uri(cfg, Path(resume_dir))), fp)
    describe_run(cfg, data, log)
    total_steps = cfg.train.epochs * n_batches
    trainer = make_trainer(cfg, data.input_shape, data.num_classes, total_steps)
    try:
        run_dir = Path(resume_dir) if resume_dir else prepare_run_dir(cfg)
        checkpointer = Checkpointer(cfg, run_dir, fp)
        if not resume_dir:
            save_config(cfg, run_dir / "config.yaml")
        result = RunResult(run_dir)
        for line in trainer.describe():
            log(line)
        if resume_dir:
            manifest = checkpointer.restore(trainer)
            log(f"resumed from checkpoint step {manifest['step']} (epoch {manifest['epoch'] + 1}, "
                f"batch {manifest['batch']})")
            position = (manifest["epoch"], manifest["batch"])
        else:
            position = (0, 0)
            if cfg.checkpoint.enabled:  # step 0: a block lost before the first save restarts from here
                checkpointer.save(trainer, 0, 0, 0)
        result.history = _read_history(run_dir, position[0])
        restarts = 0
        while True:
            loggers = make_loggers(cfg, run_dir, from_step=position[0] * n_batches + position[1])
            try:
                _train_epochs(cfg, data, trainer, checkpointer, position, n_batches, result, log, on_epoch, loggers)
                break
            except BlockLost as e:
                restarts += 1
                if not cfg.checkpoint.enabled or restarts > cfg.checkpoint.max_restarts:
                    raise TrainingError(f"block lost and no restart left ({restarts - 1} made): {e}") from None
                log(f"block lost: {e}; restart {restarts}/{cfg.checkpoint.max_restarts}")
                trainer.restart()
                manifest = checkpointer.restore(trainer)
                position = (manifest["epoch"], manifest["batch"])
                result.history = _read_history(run_dir, position[0])
                result.restarts.append({"step": manifest["step"], "error": str(e)})
                log(f"rebuilt every block from checkpoint step {manifest['step']}; replaying from there")
            finally:
                loggers.close()
        (run_dir / "summary.json").write_text(json.dumps(
            {"final": result.final, "run_dir": str(run_dir), "restarts": result.restarts,
             "provenance": provenance()}, indent=1))
        log(f"run folder: {run_dir}")
    except BaseException:
        trainer.close()
        raise
    if keep_trainer:
        result.trainer = trainer  # the caller closes it
    else:
        trainer.close()
    return result


def _train_epochs(cfg, data, trainer, checkpointer, position, n_batches, result, log, on_epoch, loggers) -> None:
    start_epoch, start_batch = position
    for epoch in range(start_epoch, cfg.train.epochs):
        progress = Progress(epoch + 1, cfg.train.epochs, n_batches - start_batch, cfg.data.batch_size, log,
                            cfg.train.log_every_s, loggers)
        chunks = epoch_chunks(data.train_x, data.train_y, cfg.data.batch_size, cfg.train.chunk_size, epoch,
                              cfg.train.seed, cfg.data.augment, start_batch)
        seconds = 0.0
        for first, end in _segments(epoch, start_batch, n_batches, cfg.train.chunk_size,
                                    cfg.checkpoint.every_steps):
            n_chunks = -(-(end - first) // cfg.train.chunk_size)
            begin = time.perf_counter()
            trainer.train_epoch(itertools.islice(chunks, n_chunks), progress)
            seconds += time.perf_counter() - begin
            if end < n_batches and cfg.checkpoint.enabled:
                checkpointer.save(trainer, epoch * n_batches + end, epoch, end)
        done = n_batches - start_batch
        record = {"epoch": epoch + 1, "epochs": cfg.train.epochs, "step": (epoch + 1) * n_batches,
                  "train_time_s": seconds, "samples_per_s": done * cfg.data.batch_size / max(seconds, 1e-9),
                  **progress.summary(), **trainer.evaluate(data.test_x, data.test_y), **validation(trainer, data)}
        if cfg.checkpoint.enabled:
            checkpointer.save(trainer, (epoch + 1) * n_batches, epoch + 1, 0)
        with open(result.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        loggers.log_epoch(record)
        log(format_record(record))
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        start_batch = 0
