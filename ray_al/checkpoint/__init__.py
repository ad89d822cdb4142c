"""Checkpoints: the files (`files.py`: one per block plus a manifest, local or a pyarrow.fs URI)
and the policy (`policy.py`: what a checkpoint must match, when to save, when to restart)."""
from ray_al.checkpoint.files import (
    Location,
    check_compatible,
    complete_checkpoints,
    location,
    read_block,
    read_manifest,
    step_dir,
    write_block,
    write_manifest,
)

__all__ = ["Location", "check_compatible", "complete_checkpoints", "location", "read_block", "read_manifest",
           "step_dir", "write_block", "write_manifest"]
