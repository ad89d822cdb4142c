"""What a run can check before Ray starts (about a second, where starting Ray takes tens on a small
machine): the loggers can log, the data is there and readable, the model builds for it, and the run
folder can be written. Each failure is the one-line ConfigError or DataError the run itself would
raise later, and leaves nothing behind."""
from __future__ import annotations

import os
from pathlib import Path

from ray_al.config import Config
from ray_al.data.datasets import peek
from ray_al.errors import ConfigError
from ray_al.models import parameter_counts
from ray_al.run.loggers import check_loggers


def check_before_ray(cfg: Config) -> None:
    check_loggers(cfg)
    shape = peek(cfg.data)  # (input shape, classes) where the data tells it cheaply; None otherwise
    if shape is not None:
        parameter_counts(cfg.model, *shape)  # builds every block and the BP twin on the meta device: free
    _check_writable(Path(cfg.run_dir).expanduser())


def _check_writable(run_dir: Path) -> None:
    """The run folder's nearest existing ancestor must let us create it (nothing is created here)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run folder {run_dir} is not writable: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run folder {run_dir} is not writable: {existing}: permission denied")
