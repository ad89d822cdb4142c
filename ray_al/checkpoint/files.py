"""Checkpoint files: one per block, written by whoever holds the block, and a manifest.

Layout under a run folder (a local path or a pyarrow.fs URI such as s3://bucket/run):

    checkpoints/step-000001875/block-1.pt   (parameters, both optimizers, step)
    checkpoints/step-000001875/manifest.json (step, epoch, data position, config, digests)

Every file is written to a temporary name and renamed; the manifest goes last, so a
checkpoint without a manifest is incomplete and ignored. Files load with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import torch

from ray_al.config import ModelConfig
from ray_al.errors import CheckpointError

MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 * 2**20  # bytes: a manifest is a config and a record, a few kB
_STEP_DIR = re.compile(r"^step-(\d{9})$")


@dataclass(frozen=True)
class Location:
    """A filesystem resolved once from a local path or a URI, and a path inside it. Paths are joined
    inside the filesystem, never appended to the URI: the query of `s3://bucket/runs?endpoint_override=
    ...&region=...` configures the filesystem, and a name appended after it would land in the query."""
    fs: pafs.FileSystem
    path: str
    scheme: str = ""  # for messages only: the query (which may hold credentials) is never shown

    def join(self, *parts: str) -> "Location":
        return Location(self.fs, posixpath.join(self.path, *parts), self.scheme)

    @property
    def parent(self) -> "Location":
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), self.scheme)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path


def location(where: "str | Location") -> Location:
    if isinstance(where, Location):
        return where
    if "://" in where:
        try:
            fs, path = pafs.FileSystem.from_uri(where)
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            raise CheckpointError(f"cannot use checkpoint location {where.split('?')[0]}: "
                                  f"{str(e).splitlines()[0]}") from None
        return Location(fs, path.rstrip("/") or path, where.split("://", 1)[0])
    return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(where)))


def filesystem(where: "str | Location") -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path, a URI or a Location."""
    loc = location(where)
    return loc.fs, loc.path


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


class UnfitFile(OSError):
    """A file of a run that is not what its manifest says (not a regular file, another size): never read."""


def _read(fs: pafs.FileSystem, path: str, size: int | None = None, limit: int | None = None) -> bytes:
    """A regular file's bytes, checked before reading: anything else (a symlink to /dev/zero, a FIFO) would
    read without end. `size`: what the manifest records, exactly; `limit`: a bound where none is recorded."""
    name, info = posixpath.basename(path), fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {name}")
    if info.type != pafs.FileType.File:
        raise UnfitFile(f"{name} is not a regular file")
    if size is not None and info.size != size:
        raise UnfitFile(f"{name} is damaged or truncated ({info.size} bytes, the manifest records {size})")
    bound = size if size is not None else limit
    if bound is not None and info.size is not None and info.size > bound:
        raise UnfitFile(f"{name} is {info.size} bytes, more than {bound}")
    with fs.open_input_stream(path) as f:
        data = f.read() if bound is None else f.read(bound + 1)  # +1: a file that grew since is caught
    if bound is not None and len(data) > bound:
        raise UnfitFile(f"{name} holds more than {bound} bytes")
    return data


def step_dir(run: "str | Location", step: int) -> Location:
    return location(run).join("checkpoints", f"step-{step:09d}")


def write_block(ckpt_uri: "str | Location", index: int, state: dict) -> str:
    """Save one block's state as block-{index+1}.pt; returns its sha256 for the manifest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    fs, path = filesystem(ckpt_uri)
    _write_atomic(fs, f"{path}/block-{index + 1}.pt", data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(ckpt_uri: str | Location, manifest: dict, keep: int) -> None:
    """Write the manifest last (the checkpoint is complete from then on), then prune the run's older ones."""
    ckpt = location(ckpt_uri)
    for block in manifest["blocks"]:  # the size each file is checked against before it is read
        info = ckpt.fs.get_file_info(f"{ckpt.path}/{block['file']}")
        if "size" not in block and info.type == pafs.FileType.File:
            block["size"] = info.size
    _write_atomic(ckpt.fs, f"{ckpt.path}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    _prune(ckpt.parent.parent, keep, manifest)  # .../RUN/checkpoints/step-N -> .../RUN


def _steps(run_uri: str | Location) -> list[tuple[int, str]]:
    fs, path = filesystem(location(run_uri).join("checkpoints"))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    steps = [(int(m.group(1)), info.path) for info in infos
             if info.type == pafs.FileType.Directory and (m := _STEP_DIR.match(info.base_name))]
    return sorted(steps)


def complete_checkpoints(run_uri: str | Location) -> list[int]:
    fs, _ = filesystem(run_uri)
    return [step for step, path in _steps(run_uri)
            if fs.get_file_info(f"{path}/{MANIFEST}").type == pafs.FileType.File]


def _prune(run_uri: str | Location, keep: int, written: dict) -> None:
    """Keep the `keep` newest complete checkpoints of the run that wrote `written`. Never deleted: another
    run's checkpoints, and any written later than `written` (a clock or a second writer would otherwise
    lose them); incomplete leftovers older than the newest complete one go."""
    fs, _ = filesystem(run_uri)
    ours = []
    for step in complete_checkpoints(run_uri):
        try:
            manifest = _manifest_at(run_uri, step)
        except CheckpointError:
            continue  # damaged: left for a person to look at, never silently removed
        if manifest.get("run_id") == written.get("run_id") and manifest["time"] <= written["time"]:
            ours.append(step)
    complete = set(complete_checkpoints(run_uri))
    newest = written["step"]
    for step, path in _steps(run_uri):
        if (step in ours and step not in ours[-keep:]) or (step not in complete and step < newest):
            fs.delete_dir(path)


MANIFEST_SCHEMA = {"step": int, "epoch": int, "batch": int, "time": (int, float), "fingerprint": dict,
                   "config": dict, "blocks": list}


def _manifest_at(run_uri: str | Location, step: int) -> dict:
    """The manifest of checkpoint `step`, its schema checked: every key, its type, the block list."""
    fs, path = filesystem(step_dir(run_uri, step))
    try:
        manifest = json.loads(_read(fs, f"{path}/{MANIFEST}", limit=MANIFEST_LIMIT))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint step {step}: unreadable manifest ({str(e).splitlines()[0]})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint step {step}: the manifest is not a JSON object")
    for key, kind in MANIFEST_SCHEMA.items():
        if key not in manifest:
            raise CheckpointError(f"checkpoint step {step}: the manifest has no '{key}'")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise CheckpointError(f"checkpoint step {step}: the manifest's '{key}' is {manifest[key]!r}")
    if manifest["step"] != step:
        raise CheckpointError(f"checkpoint step {step}: the manifest says step {manifest['step']}")
    if manifest["epoch"] < 0 or manifest["batch"] < 0:
        raise CheckpointError(f"checkpoint step {step}: negative position (epoch {manifest['epoch']}, "
                              f"batch {manifest['batch']})")
    blocks = manifest["blocks"]
    if not blocks or not all(isinstance(b, dict) and isinstance(b.get("sha256"), str) and _size_ok(b.get("size", 0))
                             for b in blocks):  # no size: a manifest from before sizes were recorded
        raise CheckpointError(f"checkpoint step {step}: the manifest's block list is malformed")
    return manifest


def _size_ok(size) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and size >= 0


def read_manifest(run_uri: str | Location, step: int | None = None) -> dict:
    """The manifest of checkpoint `step` (default: the newest complete one), schema checked."""
    complete = complete_checkpoints(run_uri)
    if not complete:
        raise CheckpointError(f"no complete checkpoint under {location(run_uri)}")
    if step is not None and step not in complete:
        shown = ", ".join(str(s) for s in complete)
        raise CheckpointError(f"no complete checkpoint at step {step} under {location(run_uri)} (complete: {shown})")
    return _manifest_at(run_uri, complete[-1] if step is None else step)


def supersede(run_uri: str | Location, after_step: int) -> list[int]:
    """Set aside the complete checkpoints after `after_step` (a run resumed from an earlier step makes
    them stale): their manifest is renamed, never deleted; the resumed run rewrites those steps."""
    moved = []
    for step in complete_checkpoints(run_uri):
        if step > after_step:
            fs, path = filesystem(step_dir(run_uri, step))
            fs.move(f"{path}/{MANIFEST}", f"{path}/manifest.superseded-{int(time.time())}.json")
            moved.append(step)
    return moved


def read_block(run_uri: str | Location, manifest: dict, index: int) -> dict:
    """Load block index (0-based) of a checkpoint, checking its digest against the manifest and its step
    count against the manifest's step (a hand-edited position must not be trusted)."""
    step = manifest["step"]
    fs, path = filesystem(step_dir(run_uri, step))
    name = f"block-{index + 1}.pt"
    if index >= len(manifest["blocks"]):
        raise CheckpointError(f"checkpoint step {step}: the manifest lists {len(manifest['blocks'])} block(s), "
                              f"the model has more")
    try:
        data = _read(fs, f"{path}/{name}", size=manifest["blocks"][index].get("size"))
    except UnfitFile as e:
        raise CheckpointError(f"checkpoint step {step}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint step {step}: cannot read {name}: {e}") from None
    if hashlib.sha256(data).hexdigest() != manifest["blocks"][index]["sha256"]:
        raise CheckpointError(f"checkpoint step {step}: {name} is damaged or truncated "
                              f"(digest does not match the manifest)")
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step}: cannot load {name}: {e}") from None
    if state.get("step_count") != step:
        raise CheckpointError(f"checkpoint step {step}: {name} holds step {state.get('step_count')}, "
                              f"not the manifest's {step}")
    return state


def _saved_fingerprint(manifest: dict) -> dict:
    """The manifest's fingerprint, with what a checkpoint made before a setting existed ran as: the model
    settings added since at their defaults, and L2 on every parameter (before optim.l2_scope)."""
    saved = dict(manifest.get("fingerprint", {}))
    if isinstance(saved.get("model"), dict):
        saved["model"] = {**dataclasses.asdict(ModelConfig()), **saved["model"]}
    saved.setdefault("l2_scope", "all")
    return saved


def check_compatible(manifest: dict, fingerprint: dict) -> None:
    """Refuse a checkpoint made for another model, dataset shape, trainer or optimizer layout, naming the
    first setting that differs."""
    saved = _saved_fingerprint(manifest)
    for key, value in fingerprint.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            for sub, v in value.items():
                if saved[key].get(sub) != v:
                    raise CheckpointError(f"checkpoint was made for {key}.{sub}={saved[key].get(sub)!r}, "
                                          f"this run has {v!r}")
        elif saved.get(key) != value:
            raise CheckpointError(f"checkpoint was made for {key}={saved.get(key)!r}, this run has {value!r}")
