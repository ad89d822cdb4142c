"""Load a finished (or interrupted) run's newest checkpoint in this process and evaluate it."""
from __future__ import annotations

from pathlib import Path

from ray_al import checkpoint as ckpt_lib
from ray_al.config import Config, apply_overrides, config_from_dict, read_yaml
from ray_al.errors import CheckpointError


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []))


def load_run(run_dir: str | Path, overrides: list[str] | None = None, device: str = "cpu"):
    """(cfg, trainer, manifest): a LocalAL (AL runs) or BPTrainer with the newest weights,
    built from the shapes the checkpoint records, so no dataset is needed."""
    from ray_al.run import checkpoint_uri, make_trainer

    cfg = run_config(run_dir, [f"train.device={device}", *(overrides or [])])
    if cfg.train.trainer == "al":
        cfg.train.trainer = "al_local"  # same blocks, same arithmetic, no actors needed
    uri = checkpoint_uri(cfg, Path(run_dir))
    manifest = ckpt_lib.read_manifest(uri)
    fp = manifest["fingerprint"]
    trainer = make_trainer(cfg, tuple(fp["input_shape"]), fp["num_classes"], total_steps=1)
    trainer.load_blocks(uri, manifest)
    return cfg, trainer, manifest
