"""Cheaper training steps, each a `train.*` option and off by default: what a block actor, `al_local`
and the BP twin apply alike, so their comparison stays fair.

    compile       on: torch.compile of the step's forward and losses (static shapes: batch and chunk are
                  fixed); cuda_graphs: the same in mode "reduce-overhead", whose CUDA graphs replay a
                  whole step in one launch (CUDA only)
    precision     bf16: autocast around forward and losses; weights, gradients and Adam stay fp32
    adam          foreach / fused: torch's multi-tensor and fused Adam kernels (same algorithm)
    pin_memory    input chunks that arrive on the host are pinned and copied with non_blocking=True (CUDA only)
    channels_last NHWC weights and 4-D inputs, the layout cuDNN's fastest convolutions want

With every option off the step is exactly the fp32 step of before (tests/test_pipeline.py stays bitwise).
A CUDA-only option on a CPU device is a one-line error, never a silent no-op.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ray_al.config import TrainConfig
from ray_al.errors import ConfigError


@dataclass(frozen=True)
class StepOptions:
    compile: str = "off"
    precision: str = "fp32"
    adam: str = "default"
    pin_memory: bool = False
    channels_last: bool = False

    @classmethod
    def from_config(cls, train: TrainConfig) -> StepOptions:
        return cls(train.compile, train.precision, train.adam, train.pin_memory, train.channels_last)

    def describe(self) -> str:
        """The options that are on, for the placement lines ("" when none)."""
        on = [f"compile={self.compile}" if self.compile != "off" else "",
              "bf16" if self.precision == "bf16" else "", f"adam={self.adam}" if self.adam != "default" else "",
              "pin_memory" if self.pin_memory else "", "channels_last" if self.channels_last else ""]
        return ", ".join(o for o in on if o)

    def check(self, device: torch.device) -> None:
        """CUDA-only options asked for on a device that is not CUDA: one line naming the key."""
        if device.type == "cuda":
            return
        if self.compile == "cuda_graphs":
            raise ConfigError(f"train.compile=cuda_graphs needs a CUDA device, but this step runs on {device}")
        if self.pin_memory:
            raise ConfigError(f"train.pin_memory=true needs a CUDA device, but this step runs on {device}")

    # -- what the trainers call ---------------------------------------------------------------
    def adam_impl(self) -> dict:
        """torch.optim.Adam's implementation arguments for train.adam (nothing: PyTorch's own choice)."""
        return {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(self.adam, {})

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Lay the module's 4-D weights out NHWC (channels_last); anything else is left as it is."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def compiled(self, fn: Callable) -> Callable:
        """fn, or torch.compile(fn) when asked; dynamic=False: every step has the same shapes."""
        if self.compile == "off":
            return fn
        mode = "reduce-overhead" if self.compile == "cuda_graphs" else None
        compiled = torch.compile(fn, mode=mode, dynamic=False)
        if self.compile != "cuda_graphs":
            return compiled

        def step(*args):
            # a CUDA graph's outputs live in memory the next replay overwrites: mark the step, clone them
            torch.compiler.cudagraph_mark_step_begin()
            return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in compiled(*args))
        return step

    def autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A chunk onto the step's device: pinned and asynchronous when asked."""
        if self.pin_memory and x.device.type == "cpu" and device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    def batch_layout(self, x: torch.Tensor) -> torch.Tensor:
        """One mini-batch in the layout the step wants (NHWC for 4-D inputs under channels_last)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x
