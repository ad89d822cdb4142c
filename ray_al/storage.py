"""A run's paths: its folder and where its checkpoints go (as Ray's StorageContext owns a trial's).

    runs/<name>/config.yaml       the resolved config (what made the run)
    runs/<name>/metrics.jsonl     one record per epoch
    runs/<name>/summary.json      the final record and the restarts
    runs/<name>/checkpoints/      or checkpoint.uri/<name>/checkpoints/ (any pyarrow.fs URI)

A run keeps its settings beside its results, as in cifar10-airbench.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray_al.config import Config, apply_overrides, config_from_dict, read_yaml, save_config
from ray_al.errors import CheckpointError, ConfigError


class RunStorage:
    def __init__(self, run_dir: str | Path, checkpoint_base: str | None):
        self.run_dir = Path(run_dir)
        self.checkpoint_uri = (f"{checkpoint_base.rstrip('/')}/{self.run_dir.name}" if checkpoint_base
                               else str(self.run_dir))

    @classmethod
    def create(cls, cfg: Config) -> RunStorage:
        """A new (or reused, when cfg.name names one) run folder under cfg.run_dir, checked writable."""
        name = cfg.name or f"{cfg.model.name}-{cfg.train.trainer}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(cfg.run_dir).expanduser() / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"run folder {path} is not writable: {e.strerror or e}") from None
        return cls(path, cfg.checkpoint.uri)

    def save_config(self, cfg: Config) -> None:
        save_config(cfg, self.run_dir / "config.yaml")

    def append_record(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self, completed_epochs: int) -> list[dict]:
        """The records of epochs up to `completed_epochs`; later ones are dropped from metrics.jsonl,
        since a run resumed from an earlier checkpoint redoes them."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in records if r["epoch"] <= completed_epochs]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run folder was made with, with `overrides` (e.g. a moved data.path) on top."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []))


def open_run(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Config, RunStorage]:
    cfg = run_config(run_dir, overrides)
    return cfg, RunStorage(run_dir, cfg.checkpoint.uri)
