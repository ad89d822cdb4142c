"""The bridge b_i, `model.bridge`: what maps block i's features s_i to its estimate of t_i.

    dense    the paper's: Flatten -> Dense(5d) -> Dense(d) on the whole feature map
    pooled   AdaptiveAvgPool2d first, to the largest p x p dividing the map with C*p*p <= 1024 features,
             then Flatten -> Dense(5d) -> Dense(d)
    wide     as pooled with 4096 features: a map of at most 4096 values is not pooled at all
    conv1x1  a 1x1 convolution to C/4 channels (at least 8) and the activation first, then as pooled
    narrow   Flatten -> Dense(d) -> Dense(d): the paper's with a hidden layer as wide as the target

A light variant (pooled, wide, conv1x1) on a vector (an MLP block, VGG's dense stage) has no map to pool and
is `narrow`. Every variant reads only its own block's s_i, so no gradient crosses a block.
"""
from __future__ import annotations

import math

import torch.nn as nn

from ray_al.config import ModelConfig
from ray_al.errors import ConfigError

BRIDGES = tuple(ModelConfig.__dataclass_fields__["bridge"].metadata["choices"])  # written once, in config.py
POOLED_FEATURES = 1024  # at most this many features enter a light bridge's dense layers (from a map)
WIDE_FEATURES = 4096


def pooled_size(channels: int, h: int, w: int, budget: int = POOLED_FEATURES) -> tuple[int, int]:
    """(ph, pw) of the map's aspect dividing (h, w), so every pooling window is equal, with the most
    features channels * ph * pw <= budget; (1, 1) when none fits."""
    sides = [(a, a * w // h) for a in range(1, h + 1)
             if h % a == 0 and (a * w) % h == 0 and w % (a * w // h) == 0 and channels * a * (a * w // h) <= budget]
    return max(sides, key=lambda ab: ab[0] * ab[1], default=(1, 1))


def reduced_channels(channels: int) -> int:
    return min(channels, max(8, channels // 4))


def _dense_head(in_features: int, hidden: int, d: int, act: type[nn.Module]) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(in_features, hidden), act(), nn.Linear(hidden, d), act()]


def build_bridge(kind: str, shape: tuple[int, ...], d: int, act: type[nn.Module]) -> nn.Sequential:
    """b_i for features of `shape` (without batch); `act` after each layer (AL: sigmoid, BP twin: its act)."""
    if kind not in BRIDGES:
        raise ConfigError(f"model.bridge: '{kind}' is not one of {', '.join(BRIDGES)}")
    if kind == "dense":
        return nn.Sequential(*_dense_head(math.prod(shape), 5 * d, d, act))
    if kind == "narrow" or len(shape) != 3:  # a vector: nothing to pool or convolve
        return nn.Sequential(*_dense_head(math.prod(shape), d, d, act))
    c, h, w = shape
    front: list[nn.Module] = []
    if kind == "conv1x1":
        front, c = [nn.Conv2d(c, reduced_channels(c), 1), act()], reduced_channels(c)
    ph, pw = pooled_size(c, h, w, WIDE_FEATURES if kind == "wide" else POOLED_FEATURES)
    pool = [] if (ph, pw) == (h, w) else [nn.AdaptiveAvgPool2d((ph, pw))]
    return nn.Sequential(*front, *pool, *_dense_head(c * ph * pw, 5 * d, d, act))
