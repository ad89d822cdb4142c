"""`ray-al eval RUN`: a run's newest checkpoint evaluated on its test split, in this process (AL runs as
al_local: the same blocks and arithmetic, no actors)."""
from __future__ import annotations

from pathlib import Path

from ray_al.data.datasets import load_dataset
from ray_al.run.factory import load_trainer


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None, device: str = "cpu") -> dict:
    """{"run_dir", "step", every exit's accuracy, "test_acc"} of the run's newest checkpoint."""
    cfg, trainer, manifest = load_trainer(run_dir, overrides, device=device)
    try:
        data = load_dataset(cfg.data)
        return {"run_dir": str(run_dir), "step": manifest["step"], **trainer.evaluate(data.test_x, data.test_y)}
    finally:
        trainer.close()
