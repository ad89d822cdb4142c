"""Model registry: a builder turns (input shape, classes, activation, knobs) into f-stages."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ray_al.errors import ConfigError
from ray_al.user_import import import_user_module


@dataclass
class Architecture:
    stages: list[nn.Module]  # f_1 .. f_N, each maps s_{i-1} -> s_i
    d: int                   # width of the targets t_i (and of the bridges' output)


Builder = Callable[..., Architecture]
_BUILDERS: dict[str, Builder] = {}


def register(name: str):
    def wrap(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn
    return wrap


def import_model_module(name: str | None) -> None:
    """`model.module`: import the user's module so its @register builders exist in this process.
    The registry is per process, so the driver and every block actor import it before the lookup."""
    if name:
        import_user_module(name, f"model.module '{name}'")


def builder_module(name: str) -> str | None:
    """The module that registered model `name` (None: not registered here)."""
    return getattr(_BUILDERS.get(name), "__module__", None)


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_architecture(name: str, input_shape: tuple[int, ...], num_classes: int,
                       act: type[nn.Module], **knobs) -> Architecture:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(model_names())})")
    builder = _BUILDERS[name]
    accepted = inspect.signature(builder).parameters
    given = {k: v for k, v in knobs.items() if v is not None}
    depth = given.pop("depth") if "depth" in given and "depth" not in accepted else None
    for key in given:
        if key not in accepted:
            raise ConfigError(f"model '{name}' has no option '{key}'")
    arch = builder(tuple(input_shape), num_classes, act, **given)
    if depth is not None and depth != len(arch.stages):  # fixed-depth models only accept their own
        raise ConfigError(f"model '{name}' has {len(arch.stages)} blocks, the config asks for {depth}")
    return arch
