"""When a run saves, what a checkpoint must match to be loaded, and when a lost block may restart.

Each block writes its own file, then the driver writes the manifest (step, data position,
config, digests): a checkpoint is complete once its manifest exists (files.py).
"""
from __future__ import annotations

import dataclasses
import time

from ray_al.checkpoint import files
from ray_al.config import CheckpointConfig, Config
from ray_al.errors import BlockLost, TrainingError
from ray_al.provenance import provenance


def fingerprint(cfg: Config, input_shape: tuple, num_classes: int) -> dict:
    """What a checkpoint must match to be loaded into this run."""
    return {"kind": "bp" if cfg.train.trainer == "bp" else "al", "model": dataclasses.asdict(cfg.model),
            "input_shape": list(input_shape), "num_classes": num_classes,
            "batch_size": cfg.data.batch_size, "seed": cfg.train.seed}


@dataclasses.dataclass
class Position:
    """Where in the data a checkpoint stands: `batch` batches into epoch `epoch` (0-based), `step` steps in."""
    step: int = 0
    epoch: int = 0
    batch: int = 0


class Checkpointer:
    """Saves checkpoints at chunk boundaries as configured and restores the newest complete one."""

    def __init__(self, cfg: Config, uri: str, fp: dict, enabled: bool = True):
        self.cfg, self.uri, self.fp = cfg, uri, fp
        self.enabled = enabled and cfg.checkpoint.enabled
        self.every = cfg.checkpoint.every_steps if self.enabled else 0

    def check(self) -> None:
        """Refuse the newest checkpoint now if it belongs to another model, data shape or trainer."""
        files.check_compatible(files.read_manifest(self.uri), self.fp)

    def save(self, trainer, position: Position) -> None:
        if not self.enabled:
            return
        ckpt = files.step_dir(self.uri, position.step)
        digests = trainer.save_blocks(ckpt)
        manifest = {"step": position.step, "epoch": position.epoch, "batch": position.batch, "time": time.time(),
                    "fingerprint": self.fp, "config": self.cfg.to_dict(), "provenance": provenance(),
                    "blocks": [{"file": f"block-{i + 1}.pt", "sha256": d} for i, d in enumerate(digests)]}
        files.write_manifest(ckpt, manifest, self.cfg.checkpoint.keep)

    def restore(self, trainer) -> Position:
        manifest = files.read_manifest(self.uri)
        files.check_compatible(manifest, self.fp)
        trainer.load_blocks(self.uri, manifest)
        return Position(manifest["step"], manifest["epoch"], manifest["batch"])

    def segments(self, epoch: int, start_batch: int, n_batches: int, chunk: int) -> list[tuple[int, int]]:
        """An epoch's batches [start_batch, n_batches) cut where a checkpoint falls due (at whole chunks):
        after every `checkpoint.every_steps` steps, rounded up to the end of a chunk."""
        cuts, first = [], start_batch
        for b in range(start_batch, n_batches, chunk):
            end = min(b + chunk, n_batches)
            due = self.every and (epoch * n_batches + end) // self.every > (epoch * n_batches + b) // self.every
            if end == n_batches or due:
                cuts.append((first, end))
                first = end
        return cuts


class RestartPolicy:
    """Whether a run survives a lost block (as Ray Train's FailurePolicy decides for a worker group):
    only from a checkpoint, at most `checkpoint.max_restarts` times per run."""

    def __init__(self, cfg: CheckpointConfig, checkpoints_on: bool):
        self.max_restarts = cfg.max_restarts if checkpoints_on else 0
        self.checkpoints_on = checkpoints_on
        self.restarts: list[dict] = []

    def admit(self, error: BlockLost) -> None:
        """Count one restart, or raise TrainingError when none is left."""
        made = len(self.restarts)
        if not self.checkpoints_on or made >= self.max_restarts:
            raise TrainingError(f"block lost and no restart left ({made} made): {error}") from None

    def record(self, step: int, error: BlockLost) -> None:
        self.restarts.append({"step": step, "error": str(error)})
