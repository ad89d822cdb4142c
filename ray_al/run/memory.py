"""Refuse a model that cannot fit in memory before any of it is allocated: its parameters are counted
on the meta device (free) and each takes weights, gradients and Adam's two moments, 16 bytes in float32.
Without this, `model.d=100000000` ends in a traceback ("can't allocate ... bytes") from deep in torch."""
from __future__ import annotations

import os

from ray_al.config import Config
from ray_al.errors import ConfigError

BYTES_PER_PARAMETER = 16  # float32 weight, gradient, Adam's first and second moments


def physical_memory() -> int:
    """This machine's memory in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_model_fits(cfg: Config, input_shape, num_classes: int, available: int | None = None) -> None:
    """One line naming the model's estimated need and the memory here, when the need is larger. The Ray
    pipeline holds one block per process, so there the largest block must fit; in-process trainers hold all."""
    from ray_al.models import build_al_blocks, build_bp_twin

    available = physical_memory() if available is None else available
    if not available:
        return
    if cfg.train.trainer == "bp":
        params, what = sum(p.numel() for p in build_bp_twin(cfg.model, input_shape, num_classes, seed=0,
                                                             device="meta").parameters()), "the model"
    else:
        sizes = [sum(p.numel() for p in b.parameters())
                 for b in build_al_blocks(cfg.model, input_shape, num_classes, seed=0, device="meta")]
        if cfg.train.trainer == "al":
            params, what = max(sizes), f"block {sizes.index(max(sizes)) + 1}"
        else:
            params, what = sum(sizes), "the model"
    need = params * BYTES_PER_PARAMETER
    if need > available:
        raise ConfigError(f"{what} needs about {_gb(need)} ({params:,} parameters with gradients and Adam "
                          f"moments), more than this machine's {_gb(available)} of memory: lower model.d "
                          f"(now {cfg.model.d}) or model.depth")
