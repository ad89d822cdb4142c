"""The trainer behind `train.trainer`, each a `Trainer` (trainers/base.py):

    al        pipeline/driver.py     the Ray pipeline: one actor per block (pipeline/actors.py)
    al_local  trainers/al_local.py   the same blocks one after another in this process: the semantic reference
    bp        trainers/bp.py         the backprop twin: the AL prediction path as one network
"""
from __future__ import annotations

from pathlib import Path

from ray_al.checkpoint.files import check_compatible, read_manifest
from ray_al.checkpoint.policy import check_owner, fingerprint
from ray_al.config import Config, changed
from ray_al.core.batches import step_batch_size
from ray_al.run.storage import open_run
from ray_al.trainers.base import InProcessTrainer, Trainer


def make_trainer(cfg: Config, input_shape: tuple, num_classes: int, total_steps: int) -> Trainer:
    if cfg.train.trainer == "al":
        from ray_al.pipeline.driver import ALPipeline  # the only trainer that needs Ray
        if cfg.ray.replicas_per_block > 1:  # R actors per block (pipeline/replicas.py); R = 1: as always
            from ray_al.pipeline.replicas import ReplicatedPipeline
            return ReplicatedPipeline(cfg, input_shape, num_classes, total_steps)
        return ALPipeline(cfg, input_shape, num_classes, total_steps)
    if cfg.train.trainer == "al_local":
        from ray_al.trainers.al_local import ALLocal
        return ALLocal(cfg, input_shape, num_classes, total_steps)
    from ray_al.trainers.bp import BPTrainer
    return BPTrainer(cfg, input_shape, num_classes, total_steps)


def load_trainer(run_dir: str | Path, overrides: list[str] | None = None,
             device: str = "cpu") -> tuple[Config, InProcessTrainer, dict]:
    """(cfg, trainer, manifest): a run folder's newest checkpoint in this process (al_local for AL runs:
    same blocks, same arithmetic, no actors), built from the shapes the checkpoint records, so no
    dataset is needed."""
    cfg, storage = open_run(run_dir, [f"train.device={device}", *(overrides or [])])
    if cfg.train.trainer == "al":  # the same blocks and arithmetic in this process: R replicas of batch B are
        cfg = changed(cfg, {"train.trainer": "al_local", "ray.replicas_per_block": 1,  # al_local with batch R x B
                            "data.batch_size": step_batch_size(cfg)})
    manifest = read_manifest(storage.checkpoint_uri)
    check_owner(manifest, storage.owners())  # as a resume checks: this run's checkpoint, made for its config
    fp = manifest["fingerprint"]
    check_compatible(manifest, fingerprint(cfg, tuple(fp["input_shape"]), fp["num_classes"]))
    trainer = make_trainer(cfg, tuple(fp["input_shape"]), fp["num_classes"], total_steps=1)
    trainer.load_blocks(storage.checkpoint_uri, manifest)
    return cfg, trainer, manifest
