"""Helpers shared by the tests: the repository, the real datasets when present, tiny configs, bitwise
state comparison, Parquet folders made on the fly, and fault injection. Fixtures live in conftest.py."""
from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_al.checkpoint.files import complete_checkpoints
from ray_al.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DATASETS = Path(os.environ.get("RAY_AL_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset_dir(name: str) -> Path:
    path = DATASETS / name
    if not any(path.glob("train-*.parquet")):
        pytest.skip(f"real dataset {name} not present (set RAY_AL_DATASETS)")
    return path


def tiny_config(tmp_path, **sections):
    """Digits, a small MLP, one thread: seconds per run. Sections merge over these values."""
    values = {
        "data": {"source": "digits", "batch_size": 32},
        "model": {"name": "mlp", "d": 32},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "chunk_size": 4, "threads": 1, "log_every_s": 0},
        "checkpoint": {"enabled": False},
        "run_dir": str(tmp_path),
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return config_from_dict(values)


def assert_states_equal(a, b, where="state", tol: dict | None = None):
    """Equality of nested state dicts (parameters, optimizer moments, steps): bitwise, or with `tol`
    (torch.testing.assert_close's rtol/atol) float tensors within it and everything else exactly equal."""
    if isinstance(a, torch.Tensor) and tol is not None and a.is_floating_point():
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_states_equal(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]", tol)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def write_parquet(folder, split, images, labels, shards=1):
    """{split}-k-of-n.parquet shards in the Hugging Face layout: image {bytes (PNG), path}, label."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(len(labels)), shards)):
        cells = []
        for i in idx:
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        table = pa.table({"image": cells, "label": pa.array(labels[idx], pa.int64())})
        pq.write_table(table, folder / f"{split}-{k:05d}-of-{shards:05d}.parquet")


# -- fault injection -------------------------------------------------------------------------
class FaultInjector:
    """Waits until `run_dir` has a complete checkpoint at or past `after_step`, then calls
    `fault(block_line)` with the start-up line naming where block `block` runs."""

    def __init__(self, run_dir: Path, after_step: int, block: int, fault, timeout: float = 120.0):
        self.run_dir, self.after_step, self.block, self.fault = run_dir, after_step, block, fault
        self.lines: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._watch, args=(timeout,), daemon=True)
        self.thread.start()

    def log(self, line: str) -> None:
        self.lines.append(line)

    def _watch(self, timeout: float) -> None:
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                where = [ln for ln in self.lines if ln.startswith(f"block {self.block}: node")]
                steps = complete_checkpoints(str(self.run_dir)) if self.run_dir.exists() else []
                if where and steps and steps[-1] >= self.after_step:
                    self.fault(where[0])
                    self.done.set()
                    return
                time.sleep(0.002)
        except BaseException as e:  # surfaced by the test
            self.error = e


# R replicas of batch B against al_local with batch R x B: the same sums in another order (tests/test_replicas.py)
REPLICA_TOL = dict(rtol=1e-5, atol=1e-6)
# a placement line of ray.replicas_per_block > 1, one per actor (pipeline/driver.describe): block, replica,
# node, host, IP, pid
REPLICA_PLACED = re.compile(r"^block (\d+) replica (\d+): node ([0-9a-f]+) \(([^,]*), ([\d.]+)\) pid (\d+) \w+, "
                            r"\d+ thread\(s\)")


def replica_placements(lines) -> list[tuple[int, int, str, int]]:
    """(block, replica, IP, pid) of every replica placement line, in order."""
    return [(int(m[1]), int(m[2]), m[5], int(m[6])) for line in lines if (m := REPLICA_PLACED.match(line))]


def pid_of(line: str) -> int:
    return int(re.search(r" pid (\d+) ", line).group(1))


def node_of(line: str) -> str:
    return re.search(r"node ([0-9a-f]+) ", line).group(1)


# A model defined outside the package, as a user would write it: BatchNorm in both blocks, so
# prediction must use running statistics (eval mode) to answer one input as it answers a batch.
USER_MODELS = '''
import math

import torch.nn as nn

from ray_al.models.registry import Architecture, register


@register("user_bn_mlp")
def user_bn_mlp(input_shape, num_classes, act, d=32):
    n = math.prod(input_shape)
    return Architecture([nn.Sequential(nn.Flatten(), nn.Linear(n, 48), nn.BatchNorm1d(48), act()),
                         nn.Sequential(nn.Linear(48, 48), nn.BatchNorm1d(48), act())], d)
'''


def write_user_models(folder: Path, module: str) -> Path:
    """A module file named `module` defining model 'user_bn_mlp', outside the package."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(USER_MODELS)
    return path


def png_header(width: int, height: int) -> bytes:
    """The start of a grey PNG of width x height: enough for Pillow to open it (and refuse a bomb) without
    anyone making the pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
