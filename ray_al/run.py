"""One training run: data, trainer, epochs, evaluation, metrics and config in a run folder.

The run folder holds `config.yaml` (the resolved config), `metrics.jsonl` (one record per
epoch) and `summary.json`, as in cifar10-airbench where a run keeps its settings beside
its results.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray_al.batches import batches_per_epoch, epoch_chunks
from ray_al.config import Config, save_config
from ray_al.data import Dataset, load_dataset
from ray_al.errors import ConfigError, DataError
from ray_al.models import parameter_counts

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
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

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, log: Log, interval: float):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.log, self.interval = log, interval
        self.done, self.sums = 0, {}
        self.start = self.last = time.perf_counter()

    def __call__(self, stats: list[dict]) -> None:
        k = stats[-1]["steps"]
        self.done += k
        for st in stats:
            for key, value in st.items():
                if key.endswith("loss"):
                    name = f"b{st['block']}_{key}"
                    self.sums[name] = self.sums.get(name, 0.0) + value * k
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
    return line + (f" exits=[{' '.join(exits)}]" if len(exits) > 1 else "")


def describe_run(cfg: Config, data: Dataset, log: Log) -> None:
    counts = parameter_counts(cfg.model, data.input_shape, data.num_classes)
    log(f"data: {data.name} train {tuple(data.train_x.shape)} test {tuple(data.test_x.shape)} "
        f"{data.num_classes} classes")
    log(f"model: {cfg.model.name} trainer={cfg.train.trainer} params: AL total {counts['al_total']:,}, "
        f"AL effective {counts['al_effective']:,}, BP twin {counts['bp']:,}")


def train(cfg: Config, log: Log = print, on_epoch: Callable[[dict], None] | None = None,
          data: Dataset | None = None, keep_trainer: bool = False) -> RunResult:
    """Train as configured; `on_epoch` receives each epoch's record (Ray Tune reports from it)."""
    data = data or load_dataset(cfg.data)
    n_batches = batches_per_epoch(len(data.train_x), cfg.data.batch_size)
    if n_batches == 0:
        raise DataError(f"{len(data.train_x)} training samples do not fill one batch of {cfg.data.batch_size}")
    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    describe_run(cfg, data, log)
    total_steps = cfg.train.epochs * n_batches
    trainer = make_trainer(cfg, data.input_shape, data.num_classes, total_steps)
    result = RunResult(run_dir)
    try:
        for line in trainer.describe():
            log(line)
        for epoch in range(cfg.train.epochs):
            progress = Progress(epoch + 1, cfg.train.epochs, n_batches, cfg.data.batch_size, log,
                                cfg.train.log_every_s)
            chunks = epoch_chunks(data.train_x, data.train_y, cfg.data.batch_size, cfg.train.chunk_size, epoch,
                                  cfg.train.seed, cfg.data.augment)
            start = time.perf_counter()
            trainer.train_epoch(chunks, progress)
            seconds = time.perf_counter() - start
            record = {"epoch": epoch + 1, "epochs": cfg.train.epochs, "step": (epoch + 1) * n_batches,
                      "train_time_s": seconds, "samples_per_s": n_batches * cfg.data.batch_size / seconds,
                      **progress.summary(), **trainer.evaluate(data.test_x, data.test_y)}
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log(format_record(record))
            result.history.append(record)
            if on_epoch:
                on_epoch(record)
        (run_dir / "summary.json").write_text(json.dumps({"final": result.final, "run_dir": str(run_dir)}, indent=1))
        log(f"run folder: {run_dir}")
    except BaseException:
        trainer.close()
        raise
    if keep_trainer:
        result.trainer = trainer  # the caller closes it
    else:
        trainer.close()
    return result
