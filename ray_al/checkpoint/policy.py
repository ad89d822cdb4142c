"""When a run saves, what a checkpoint must match to be loaded, and when a lost block may restart.

Each block writes its own file, then the driver writes the manifest (step, data position,
config, digests): a checkpoint is complete once its manifest exists (files.py).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Collection

from ray_al.checkpoint import files
from ray_al.checkpoint.provenance import provenance
from ray_al.config import CheckpointConfig, Config
from ray_al.core.batches import step_batch_size
from ray_al.errors import BlockLost, CheckpointError, TrainingError

# the settings a checkpoint is bound to (fingerprint() records what of them decides its state): a
# checkpoint made under other values cannot continue the same run, so PBT may not perturb them in a trial
PINNED_BY_CHECKPOINT = ("model.", "data.", "train.seed", "train.trainer", "optim.l2_scope")


def fingerprint(cfg: Config, input_shape: tuple, num_classes: int) -> dict:
    """What a checkpoint must match to be loaded into this run."""
    return {"kind": "bp" if cfg.train.trainer == "bp" else "al", "model": dataclasses.asdict(cfg.model),
            "input_shape": list(input_shape), "num_classes": num_classes,
            "batch_size": step_batch_size(cfg), "seed": cfg.train.seed,  # per step: any R with R x B resumes
            # the optimizer's parameter groups follow it (ray_al/core/weight_decay.py): without L2 both scopes give
            # the one group of `all`; f_kernels with L2 gives two, which a one-group checkpoint cannot load
            "l2_scope": cfg.optim.l2_scope if cfg.optim.weight_decay else "all"}


class ForeignCheckpoint(CheckpointError):
    """A checkpoint that another run wrote: refused, never fallen back from (it is not damage)."""


def check_owner(manifest: dict, owners: Collection[str | None]) -> None:
    """Refuse a checkpoint written by another run (its folder copied in, or its run_id edited). A run loads
    its own and those it adopted on record (run.json "adopted": Tune's PBT continues a trial from another
    trial's checkpoint); a run from before run ids (no run.json) loads manifests without one."""
    if manifest.get("run_id") not in owners:
        mine = ", ".join(sorted(str(o) for o in owners))
        raise ForeignCheckpoint(f"checkpoint step {manifest['step']} was written by run {manifest.get('run_id')}, "
                                f"not by this run ({mine}, run.json): a checkpoint of another run is never loaded")


@dataclasses.dataclass
class Position:
    """Where in the data a checkpoint stands: `batch` batches into epoch `epoch` (0-based), `step` steps in."""
    step: int = 0
    epoch: int = 0
    batch: int = 0


class Checkpointer:
    """Saves checkpoints at chunk boundaries as configured and restores the newest usable one: a damaged
    newest checkpoint falls back to the one before it, saying so."""

    def __init__(self, cfg: Config, uri, fp: dict, enabled: bool = True, run_id: str | None = None,
                 n_batches: int | None = None, log=print, adopted: Collection[str] = ()):
        """adopted: run ids besides `run_id` whose checkpoints this run loads (RunStorage.owners)."""
        self.cfg, self.uri, self.fp, self.run_id, self.n_batches, self.log = cfg, uri, fp, run_id, n_batches, log
        self.owners = {run_id, *adopted}
        self.enabled = enabled and cfg.checkpoint.enabled
        self.every = cfg.checkpoint.every_steps if self.enabled else 0

    def exists(self) -> bool:
        """Whether a complete checkpoint is there to restore (none before the step-0 save)."""
        return bool(files.complete_checkpoints(self.uri))

    def check(self, step: int | None = None) -> None:
        """Refuse now (before any actor starts) a checkpoint of another model, data shape or trainer, and a
        requested step that is not there."""
        manifest = files.read_manifest(self.uri, step)
        check_owner(manifest, self.owners)
        files.check_compatible(manifest, self.fp)

    def save(self, trainer, position: Position, record: dict | None = None) -> None:
        """`record`: the epoch's record, kept in the epoch-end manifest so metrics.jsonl can be repaired."""
        if not self.enabled:
            return
        ckpt = files.step_dir(self.uri, position.step)
        digests = trainer.save_blocks(ckpt)
        manifest = {"run_id": self.run_id, "step": position.step, "epoch": position.epoch, "batch": position.batch,
                    "time": time.time(), "fingerprint": self.fp, "config": self.cfg.to_dict(),
                    "provenance": provenance(), "replicas_per_block": self.cfg.ray.replicas_per_block,  # any R resumes
                    "blocks": [{"file": f"block-{i + 1}.pt", "sha256": d} for i, d in enumerate(digests)],
                    **({"record": record} if record else {})}
        files.write_manifest(ckpt, manifest, self.cfg.checkpoint.keep)

    def restore(self, trainer, step: int | None = None) -> Position:
        """Load checkpoint `step`, or the newest one that loads: each one tried is checked (schema, model,
        position against the data, every block's digest and step count); a damaged one is reported and
        the one before it tried."""
        candidates = [step] if step is not None else files.complete_checkpoints(self.uri)[::-1]
        if not candidates:
            raise CheckpointError(f"no complete checkpoint under {files.location(self.uri)}")
        errors = []
        for s in candidates:
            try:
                manifest = files.read_manifest(self.uri, s)
                check_owner(manifest, self.owners)
                files.check_compatible(manifest, self.fp)
                position = self._position(manifest)
                trainer.load_blocks(self.uri, manifest)
            except CheckpointError as e:
                if step is not None or isinstance(e, ForeignCheckpoint) or str(e).startswith("checkpoint was made for"):
                    raise
                errors.append(f"step {s}")
                self.log(f"{e}; trying the one before it")
                continue
            if errors:
                self.log(f"resuming from checkpoint step {s}: the newer {', '.join(errors)} could not be used "
                         f"(choose one with --resume RUN_DIR --step N)")
            return position
        raise CheckpointError(f"no usable checkpoint under {files.location(self.uri)}: {', '.join(errors)} "
                              f"all damaged")

    def _position(self, manifest: dict) -> Position:
        """The manifest's data position, checked against its step and this run's batches per epoch."""
        position = Position(manifest["step"], manifest["epoch"], manifest["batch"])
        n = self.n_batches
        if n and (position.batch >= n or position.epoch * n + position.batch != position.step):
            raise CheckpointError(f"checkpoint step {position.step}: its position (epoch {position.epoch + 1}, batch "
                                  f"{position.batch}) does not match {n} batches per epoch")
        return position

    def records(self) -> dict[int, dict]:
        """Epoch records kept in the complete checkpoints' manifests, by epoch (for repairing metrics.jsonl)."""
        found = {}
        for step in files.complete_checkpoints(self.uri) if self.enabled else []:
            try:
                manifest = files.read_manifest(self.uri, step)
                check_owner(manifest, self.owners)  # another run's record never repairs this run's metrics
            except CheckpointError:
                continue
            record = manifest.get("record")
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                found[record["epoch"]] = record
        return found

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

    def record(self, step: int | None, error: BlockLost) -> None:
        """step None: lost before the step-0 checkpoint (during target-path warm-up)."""
        self.restarts.append({"step": step, "error": str(error)})
