"""Which parameters L2 reaches (`optim.l2_scope`), as Adam parameter groups.

The authors' code adds L2 through the kernel regularisers of the f layers only (the bridges, the
target path g/h, biases and BatchNorm are never decayed), so `f_kernels`, the default, decays the
weight tensors of the Linear and Conv layers of f; `all` gives Adam's weight_decay to every
parameter the optimizer holds (what ray_al did before the option existed). The BP networks are
all forward path, so there `f_kernels` means every Linear and Conv weight.

A layer with `no_l2 = True` is left out, as the code leaves it out: AL-VGG's two Dense(1024) and
every dense layer of the authors' BP-VGG get their regulariser in `tf.layers.dense`'s `use_bias`
position (CIFAR10/models.py at 5069adc), so no L2 reaches them. The mark travels with the layer,
so the VGG twin leaves its Dense(1024)s undecayed too.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def kernels(module: nn.Module) -> list[nn.Parameter]:
    """The weight tensors of the Linear and Conv layers inside `module` (no biases, no norm layers), but
    not of a layer marked `no_l2`."""
    return [m.weight for m in module.modules() if isinstance(m, KERNEL_LAYERS) and not getattr(m, "no_l2", False)]


def adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float, scope: str,
         kernels_in_scope: list[nn.Parameter], impl: dict | None = None) -> torch.optim.Adam:
    """Adam over `params` with L2 `weight_decay` on every one (scope `all`: one group, exactly the old
    optimizer) or only on those of `params` in `kernels_in_scope` (scope `f_kernels`: a decayed group
    first, then the rest with weight_decay 0); `impl`: Adam's foreach/fused choice (StepOptions.adam_impl)."""
    impl = impl or {}
    params = list(params)
    if scope == "all" or not weight_decay:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **impl)
    chosen = {id(p) for p in kernels_in_scope}
    groups = [{"params": [p for p in params if id(p) in chosen], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in chosen], "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr, **impl)
