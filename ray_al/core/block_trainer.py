"""One pipeline stage without Ray: a block, its two Adam optimizers and its lr schedule.

The Ray actor and the in-process reference both drive this class, so the pipelined run
does exactly the arithmetic of the sequential algorithm.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ray_al.config import ModelConfig, OptimConfig
from ray_al.core.blocks import ALBlock
from ray_al.core.schedule import lr_multiplier
from ray_al.core.step_options import StepOptions
from ray_al.core.target_path import warmup_lr
from ray_al.core.weight_decay import adam, kernels
from ray_al.errors import TrainingError


class BlockTrainer:
    def __init__(self, block: ALBlock, optim: OptimConfig, total_steps: int, index: int,
                 model: ModelConfig | None = None, options: StepOptions | None = None):
        self.block, self.index = block, index
        self.model = model or ModelConfig()
        self.opt_warmup = None  # target-path warm-up's own Adam, made on the first warm-up step
        self.optim, self.total_steps = optim, total_steps
        self.device = next(block.parameters()).device
        self.options = options or StepOptions()  # all off: the plain fp32 step
        self.options.check(self.device)
        self.options.prepare(block)
        wd, scope, f_kernels, impl = optim.weight_decay, optim.l2_scope, kernels(block.f), self.options.adam_impl()
        self.opt_forward = adam(block.forward_params(), optim.lr, wd, scope, f_kernels, impl)
        self.opt_target = adam(block.target_params(), optim.lr * optim.target_lr_scale, wd, scope, f_kernels, impl)
        self.local_losses = self.options.compiled(block.local_losses)
        self.step_count = 0
        # called between backward and the optimizer steps: block replicas average their gradients there
        # (ray_al/pipeline/replicas.py); None (al_local, one replica per block): the plain step
        self.after_backward: Callable[[], None] | None = None

    def _set_lr(self) -> None:
        m = lr_multiplier(self.optim.schedule, self.step_count, self.total_steps)
        for opt, base in ((self.opt_forward, self.optim.lr),
                          (self.opt_target, self.optim.lr * self.optim.target_lr_scale)):
            for group in opt.param_groups:
                group["lr"] = base * m

    def step(self, s_prev: torch.Tensor, t_prev: torch.Tensor):
        """One optimizer step of both local losses; returns detached (s_i, t_i, L_i, L'_i)."""
        self.block.train()
        self._set_lr()
        with self.options.autocast(self.device):  # backward runs outside autocast, as torch recommends
            s, t, bridge_loss, ae_loss = self.local_losses(self.options.batch_layout(s_prev), t_prev)
        self.opt_forward.zero_grad(set_to_none=True)
        self.opt_target.zero_grad(set_to_none=True)
        (bridge_loss + ae_loss).backward()  # the two losses touch disjoint parameters
        if self.after_backward is not None:
            self.after_backward()
        self.opt_forward.step()
        self.opt_target.step()
        self.step_count += 1
        return s.detach(), t.detach(), bridge_loss.detach(), ae_loss.detach()

    def train_chunk(self, s_prev: torch.Tensor, t_prev: torch.Tensor):
        """K steps over stacked inputs [K, B, ...]; returns stacked outputs and loss stats, with the
        seconds this chunk's steps took (`compute_s`: what bounds a pipeline's rate, measured where it runs)."""
        start = time.perf_counter()
        s_prev, t_prev = self.options.to_device(s_prev, self.device), self.options.to_device(t_prev, self.device)
        first_step = self.step_count
        outs_s, outs_t, losses = [], [], []
        for k in range(s_prev.shape[0]):
            s, t, lb, la = self.step(s_prev[k], t_prev[k])
            outs_s.append(s)
            outs_t.append(t)
            losses.append(torch.stack([lb, la]))
        losses = torch.stack(losses).cpu()  # one device sync per chunk
        if not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).any(dim=1).nonzero()[0])
            raise TrainingError(f"block {self.index + 1}: non-finite loss at step {first_step + bad + 1}")
        outs_s, outs_t = torch.stack(outs_s), torch.stack(outs_t)
        stats = {"block": self.index + 1, "step": self.step_count, "steps": len(losses),
                 "bridge_loss": float(losses[:, 0].mean()), "ae_loss": float(losses[:, 1].mean()),
                 "compute_s": time.perf_counter() - start}
        return outs_s, outs_t, stats

    # -- target path alone (ray_al/core/target_path.py) -----------------------------------------
    def warmup_chunk(self, t_prev: torch.Tensor):
        """K target-path-only steps (g_i, h_i on L'_i) over stacked t_{i-1} [K, B, ...]; block 1
        gets labels. Returns the stacked t_i for the next block and this block's stats."""
        t_prev = t_prev.to(self.device)
        if self.opt_warmup is None:  # its own Adam: the data steps then start exactly as in the paper
            lr = warmup_lr(self.model, self.block.g.out_features)
            self.opt_warmup = torch.optim.Adam(self.block.target_params(), lr=lr)
        opt = self.opt_warmup
        self.block.train()
        outs, losses = [], []
        for k in range(t_prev.shape[0]):
            t, loss = self.block.target_losses(t_prev[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            outs.append(t.detach())
            losses.append(loss.detach())
        losses = torch.stack(losses).cpu()
        if not torch.isfinite(losses).all():
            raise TrainingError(f"block {self.index + 1}: non-finite loss in target warm-up")
        return torch.stack(outs), {"block": self.index + 1, "steps": len(losses), "ae_loss": float(losses.mean())}

    def end_warmup(self) -> None:
        """Drop warm-up's own Adam: the data steps start with the block's usual optimizers."""
        self.opt_warmup = None

    @torch.no_grad()
    def encode_targets(self, t_prev: torch.Tensor) -> torch.Tensor:
        """t_i = g_i(t_{i-1}) in eval mode; block 1 takes labels."""
        self.block.eval()
        return self.block.encode_target(self.block.target_input(t_prev.to(self.device)))

    # -- inference -----------------------------------------------------------------
    @torch.no_grad()
    def infer(self, s_prev: torch.Tensor):
        """(s_i, b_i(s_i)) in eval mode: the features for the next block and this exit's bridge; with
        exit_readout=targets the exit's scores instead (refresh_readout first)."""
        self.block.eval()
        s = self.block(s_prev.to(self.device))
        bridged = self.block.bridge(s)
        return s, (self.block.read_out(bridged) if self.block.reads_out else bridged)

    @torch.no_grad()
    def refresh_readout(self, t_prev: torch.Tensor) -> torch.Tensor:
        """This block's read-out from the class targets t_i = g_i(t_{i-1}) of every class; returns them."""
        t = self.encode_targets(t_prev)
        self.block.set_readout(t)
        return t

    @torch.no_grad()
    def apply_h(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        """This block's h_i applied to each t: sigmoid(h_i(t)), or for block 1 the logits h_1(t)."""
        self.block.eval()
        fn = self.block.decode_logits if self.index == 0 else self.block.decode
        return [fn(t.to(self.device)) for t in ts]

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"block": self.block.state_dict(), "opt_forward": self.opt_forward.state_dict(),
                "opt_target": self.opt_target.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.block.load_state_dict(state["block"])
        self.opt_forward.load_state_dict(state["opt_forward"])
        self.opt_target.load_state_dict(state["opt_target"])
        self.step_count = int(state["step_count"])
