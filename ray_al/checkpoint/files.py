"""Checkpoint files: one per block, written by whoever holds the block, and a manifest.

Layout under a run folder (a local path or a pyarrow.fs URI such as s3://bucket/run):

    checkpoints/step-000001875/block-1.pt   (parameters, both optimizers, step)
    checkpoints/step-000001875/manifest.json (step, epoch, data position, config, digests)

Every file is written to a temporary name and renamed; the manifest goes last, so a
checkpoint without a manifest is incomplete and ignored. Files load with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import io
import json
import re

import pyarrow.fs as pafs
import torch

from ray_al.errors import CheckpointError

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{9})$")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    import os
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: a full disk or a crash leaves the old files as they were."""
    tmp = f"{path}.tmp"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except OSError as e:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise CheckpointError(f"cannot write checkpoint file {path}: {getattr(e, 'strerror', None) or e}") from None


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def step_dir(run_uri: str, step: int) -> str:
    return f"{run_uri.rstrip('/')}/checkpoints/step-{step:09d}"


def write_block(ckpt_uri: str, index: int, state: dict) -> str:
    """Save one block's state as block-{index+1}.pt; returns its sha256 for the manifest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    fs, path = filesystem(ckpt_uri)
    _write_atomic(fs, f"{path}/block-{index + 1}.pt", data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(ckpt_uri: str, manifest: dict, keep: int) -> None:
    fs, path = filesystem(ckpt_uri)
    _write_atomic(fs, f"{path}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    _prune(ckpt_uri.rsplit("/checkpoints/", 1)[0], keep)


def _steps(run_uri: str) -> list[tuple[int, str]]:
    fs, path = filesystem(f"{run_uri.rstrip('/')}/checkpoints")
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    steps = [(int(m.group(1)), info.path) for info in infos
             if info.type == pafs.FileType.Directory and (m := _STEP_DIR.match(info.base_name))]
    return sorted(steps)


def complete_checkpoints(run_uri: str) -> list[int]:
    fs, _ = filesystem(run_uri)
    return [step for step, path in _steps(run_uri)
            if fs.get_file_info(f"{path}/{MANIFEST}").type == pafs.FileType.File]


def _prune(run_uri: str, keep: int) -> None:
    complete = complete_checkpoints(run_uri)
    fs, _ = filesystem(run_uri)
    newest = complete[-1] if complete else None
    for step, path in _steps(run_uri):
        # older complete ones beyond `keep`, and incomplete leftovers older than the newest complete
        if (step in complete and step not in complete[-keep:]) or (step not in complete and newest and step < newest):
            fs.delete_dir(path)


def read_manifest(run_uri: str, step: int | None = None) -> dict:
    complete = complete_checkpoints(run_uri)
    if not complete:
        raise CheckpointError(f"no complete checkpoint under {run_uri}")
    step = complete[-1] if step is None else step
    fs, path = filesystem(step_dir(run_uri, step))
    try:
        return json.loads(_read(fs, f"{path}/{MANIFEST}"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable checkpoint manifest at step {step}: {e}") from None


def read_block(run_uri: str, manifest: dict, index: int) -> dict:
    """Load block index (0-based) of a checkpoint, checking its digest against the manifest."""
    fs, path = filesystem(step_dir(run_uri, manifest["step"]))
    name = f"block-{index + 1}.pt"
    try:
        data = _read(fs, f"{path}/{name}")
    except OSError as e:
        raise CheckpointError(f"checkpoint step {manifest['step']}: cannot read {name}: {e}") from None
    if hashlib.sha256(data).hexdigest() != manifest["blocks"][index]["sha256"]:
        raise CheckpointError(f"checkpoint step {manifest['step']}: {name} is damaged or truncated "
                              f"(digest does not match the manifest)")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint step {manifest['step']}: cannot load {name}: {e}") from None


def check_compatible(manifest: dict, fingerprint: dict) -> None:
    """Refuse a checkpoint made for another model, dataset shape or trainer."""
    saved = manifest.get("fingerprint", {})
    for key, value in fingerprint.items():
        if saved.get(key) != value:
            raise CheckpointError(f"checkpoint was made for {key}={saved.get(key)!r}, this run has {value!r}")
