"""Shared test helpers: tiny configs, the real datasets when present, one Ray cluster per module."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ray_al.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
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


def assert_states_equal(a, b, where="state"):
    """Bitwise equality of nested state dicts (parameters, optimizer moments, steps)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_states_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


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
