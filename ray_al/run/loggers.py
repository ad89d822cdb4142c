"""Where a run's numbers go besides `metrics.jsonl`: TensorBoard by default, MLflow and W&B on request.

Every logger has the same three calls, and the run loop makes them through one `RunLoggers`:

    log_step(step, scalars)   per-block losses and samples/s, every `log.every_steps` optimizer steps
    log_epoch(record)         every numeric key of the epoch record (losses, exit accuracies,
                              samples/s, and whatever else a record carries), at the record's step
    close()

MLflow and W&B are imported only when chosen (`log.mlflow=true`, `log.wandb=true`), so a run
that does not ask for them needs neither package. Console lines go through Python `logging`
(logger `ray_al`), printed bare on stdout unless the application gave that logger its own handlers.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ray_al.core.batches import step_batch_size
from ray_al.core.record import LossSums
from ray_al.errors import ConfigError

LOG = logging.getLogger("ray_al")


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (test capture, Ray's log forwarding)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def console(message: str) -> None:
    """A run's default `log`: INFO on the `ray_al` logger, printed as it is on stdout (the epoch lines
    that `ray job logs` shows) unless the application gave that logger handlers of its own."""
    if not LOG.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
    LOG.info(message)


def numeric(record: dict) -> dict[str, float]:
    """The keys of a record a logger can plot: numbers (not flags, not strings), less the step (the
    x axis) and the run's length."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epochs")}


def _require(package: str, key: str):
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{key}=true needs the {package} package: pip install 'ray_al[{package}]'") from None


class TensorBoardLogger:
    """Event files in the run folder itself, so `tensorboard --logdir runs` shows every run by name.
    A run that starts (again) after step `from_step` hides the events of later steps that an
    earlier attempt wrote: they are about to be redone (TensorBoard's purge_step)."""

    def __init__(self, run_dir: Path, from_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=from_step + 1)

    def log_step(self, step, scalars):
        for key, value in scalars.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, record):
        for key, value in numeric(record).items():
            self.writer.add_scalar(f"epoch/{key}", value, int(record["step"]))
        self.writer.flush()

    def close(self):
        self.writer.close()


class MLflowLogger:
    def __init__(self, cfg, run_dir: Path):
        mlflow = _require("mlflow", "log.mlflow")
        if cfg.log.mlflow_uri:
            mlflow.set_tracking_uri(cfg.log.mlflow_uri)
        mlflow.set_experiment(cfg.log.project)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(_flat(cfg.to_dict()))

    def log_step(self, step, scalars):
        self.mlflow.log_metrics({f"step/{k}": v for k, v in scalars.items()}, step=step)

    def log_epoch(self, record):
        self.mlflow.log_metrics({f"epoch/{k}": v for k, v in numeric(record).items()}, step=int(record["step"]))

    def close(self):
        self.mlflow.end_run()


class WandbLogger:
    """W&B's own settings apply (WANDB_MODE=offline runs without network, WANDB_DIR, ...)."""

    def __init__(self, cfg, run_dir: Path):
        wandb = _require("wandb", "log.wandb")
        self.run = wandb.init(project=cfg.log.project, name=run_dir.name, dir=str(run_dir),
                              config=cfg.to_dict(), reinit="finish_previous")

    def log_step(self, step, scalars):
        self.run.log({f"step/{k}": v for k, v in scalars.items()}, step=step)

    def log_epoch(self, record):
        self.run.log({f"epoch/{k}": v for k, v in numeric(record).items()}, step=int(record["step"]))

    def close(self):
        self.run.finish()


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class RunLoggers:
    """The configured loggers as one. `log_chunk` takes every block's stats of a chunk (K steps) and
    hands the loggers the mean of each block's losses since the last call that crossed a multiple
    of `every_steps`, with the samples/s of that window."""

    def __init__(self, loggers: list, every_steps: int, batch_size: int):
        self.loggers, self.every, self.batch_size = loggers, every_steps, batch_size
        self._window, self._since = LossSums(), time.perf_counter()

    def log_chunk(self, stats: list[dict]) -> None:
        if not self.loggers or not self.every:
            return
        step = stats[-1]["step"]
        k = self._window.add(stats)
        if step // self.every > (step - k) // self.every:
            now = time.perf_counter()
            scalars = self._window.mean()
            scalars["samples_per_s"] = self._window.steps * self.batch_size / max(now - self._since, 1e-9)
            self.log_step(step, scalars)
            self._window, self._since = LossSums(), now

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_step(step, scalars)

    def log_epoch(self, record: dict) -> None:
        self._since = time.perf_counter()  # evaluation time is not training time
        for logger in self.loggers:
            logger.log_epoch(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def check_loggers(cfg) -> None:
    """Before a run starts anything: a chosen logger whose package is missing is a one-line error."""
    if cfg.log.mlflow:
        _require("mlflow", "log.mlflow")
    if cfg.log.wandb:
        _require("wandb", "log.wandb")
        _check_wandb_key()


def _check_wandb_key() -> None:
    """W&B online needs an API key (WANDB_API_KEY, or `wandb login`'s netrc entry); without one wandb.init
    fails after Ray and every block have started. Offline and disabled modes need none."""
    import netrc
    import os
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc().authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ConfigError(f"log.wandb=true: no W&B API key for {host} (run `wandb login`, set WANDB_API_KEY, or "
                      f"WANDB_MODE=offline)")


def make_loggers(cfg, run_dir: Path, from_step: int = 0) -> RunLoggers:
    """The loggers `cfg.log` asks for; MLflow and W&B packages are imported here, only when chosen."""
    loggers: list = []
    try:
        if cfg.log.tensorboard:
            loggers.append(TensorBoardLogger(run_dir, from_step))
        if cfg.log.mlflow:
            loggers.append(MLflowLogger(cfg, run_dir))
        if cfg.log.wandb:
            loggers.append(WandbLogger(cfg, run_dir))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    return RunLoggers(loggers, cfg.log.every_steps, step_batch_size(cfg))
