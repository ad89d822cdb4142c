"""The weights-only run loader that prediction, every Serve replica and the export share.

It builds the AL blocks the run's config and its newest checkpoint's manifest describe (model,
input shape, classes) and loads only their parameters and buffers: no trainer, no optimizer, no
Adam state. The checks are the training loader's (run.factory.load_trainer): a run folder with a
config, a complete checkpoint of this run (its run id) made for its config (the fingerprint) with a
valid manifest, every block file a regular file of the size, digest and step count the manifest
records, and parameters that fit the model.
"""
from __future__ import annotations

from pathlib import Path

from ray_al.checkpoint.files import check_compatible, read_block, read_manifest
from ray_al.checkpoint.policy import check_owner, fingerprint
from ray_al.config import Config
from ray_al.core.blocks import ALBlock
from ray_al.errors import CheckpointError
from ray_al.models import block_count, build_al_block
from ray_al.run.storage import open_run


def load_weights(run_dir: str | Path, overrides: list[str] | None = None,
                 upto: int | None = None) -> tuple[Config, list[ALBlock], dict]:
    """(cfg, blocks, manifest): blocks 1..upto (default: all) of the newest checkpoint, on the CPU
    in eval mode. Stage k needs blocks 1..k (its exit decodes through h_k..h_1)."""
    cfg, storage = open_run(run_dir, overrides)
    manifest = read_manifest(storage.checkpoint_uri)
    check_owner(manifest, storage.owners())  # this run's own checkpoint, made for its config, as a resume checks
    fp = manifest["fingerprint"]
    check_compatible(manifest, fingerprint(cfg, tuple(fp["input_shape"]), fp["num_classes"]))
    if cfg.train.trainer == "bp" or fp.get("kind") == "bp":
        raise CheckpointError(f"{run_dir} is a bp run: prediction by exit needs an AL run "
                              f"(train.trainer=al or al_local)")
    input_shape, num_classes = tuple(fp["input_shape"]), fp["num_classes"]
    n = block_count(cfg.model, input_shape, num_classes) if upto is None else upto
    blocks = []
    for i in range(n):
        block = build_al_block(cfg.model, input_shape, num_classes, i, cfg.train.seed, "cpu")
        state = read_block(storage.checkpoint_uri, manifest, i)["block"]
        try:
            block.load_state_dict(state)
        except RuntimeError as e:  # torch lists every mismatched tensor over many lines
            first = str(e).splitlines()[1:2] or [str(e)]
            raise CheckpointError(f"checkpoint step {manifest['step']}: block-{i + 1}.pt does not fit model "
                                  f"'{cfg.model.name}' ({first[0].strip()})") from None
        blocks.append(block.eval())
    return cfg, blocks, manifest
