"""One Associated Learning block: f, g, h, b and its two local losses. No Ray here.

Block i maps features s_{i-1} -> s_i = f_i(s_{i-1}) and targets t_{i-1} -> t_i = g_i(t_{i-1}).
The bridge b_i ties them: L_i = MSE(b_i(s_i), stopgrad(t_i)) trains f_i and b_i; the
autoencoder loss L'_i = MSE(h_i(t_i), t_{i-1}) trains g_i and h_i. Inputs arrive detached,
so no gradient ever leaves the block.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BlockOptions:
    bridge_grad_to_g: bool = False  # let L_i reach g_i (no stopgrad on t_i); off as in the paper's code
    first_decoder_ce: bool = False  # block 1 decodes with cross-entropy on the labels instead of MSE
    exit_readout: str = "decoders"  # exit k's scores: h_k..h_1 (the paper), or least squares onto the class targets
    bridge_loss: str = "mse"  # L_i: the paper's MSE, or "contrastive" (bridge_contrastive_loss)
    bridge_temperature: float = 0.05


class ALBlock(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module, h: nn.Module, b: nn.Module,
                 num_classes: int, is_first: bool, options: BlockOptions | None = None):
        super().__init__()
        self.f, self.g, self.h, self.b = f, g, h, b
        self.num_classes = num_classes
        self.is_first = is_first
        self.options = options or BlockOptions()
        self.readout: torch.Tensor | None = None  # [d, C] with exit_readout=targets: set_readout; not in the state

    @property
    def reads_out(self) -> bool:
        return self.options.exit_readout == "targets"

    # -- the four maps --------------------------------------------------------------
    def forward(self, s_prev: torch.Tensor) -> torch.Tensor:
        return self.f(s_prev)

    def encode_target(self, t_prev: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.g(t_prev))

    def decode_logits(self, t: torch.Tensor) -> torch.Tensor:
        return self.h(t)

    def decode(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.h(t))

    def bridge(self, s: torch.Tensor) -> torch.Tensor:
        return self.b(s)

    def set_readout(self, class_targets: torch.Tensor) -> None:
        """From t_i of every class [C, d]. The bridge regresses onto t_i with MSE, so where classes are
        uncertain b_i(s_i) lands near the blend sum_c p_c t_c, which the decoders (trained on the C pure
        targets only) decode poorly; least squares recovers the weights p (exactly while the C targets are
        linearly independent, d >= C): scores = b_i(s_i) pinv(T)."""
        self.readout = torch.linalg.pinv(class_targets.flatten(1).double()).to(class_targets.dtype)

    def read_out(self, bridged: torch.Tensor) -> torch.Tensor:
        return bridged.flatten(1) @ self.readout.to(bridged.device)

    # -- training -------------------------------------------------------------------
    def target_input(self, t_prev: torch.Tensor) -> torch.Tensor:
        """Block 1 receives integer labels and encodes them one-hot; later blocks get t_{i-1}."""
        if self.is_first:
            return F.one_hot(t_prev.long(), self.num_classes).to(torch.get_default_dtype())
        return t_prev

    def target_losses(self, t_prev: torch.Tensor):
        """(t_i, L'_i): the target path alone, which never sees x (what warm-up trains)."""
        t_in = self.target_input(t_prev).detach()
        t = self.encode_target(t_in)
        if self.is_first and self.options.first_decoder_ce:
            return t, F.cross_entropy(self.decode_logits(t), t_prev.long())
        return t, F.mse_loss(self.decode(t), t_in)

    def local_losses(self, s_prev: torch.Tensor, t_prev: torch.Tensor):
        """Returns (s_i, t_i, bridge loss, autoencoder loss); s_i and t_i still carry graph."""
        s = self.f(s_prev.detach())
        t, ae_loss = self.target_losses(t_prev)
        t_ref = t if self.options.bridge_grad_to_g else t.detach()
        if self.options.bridge_loss == "contrastive":
            bridge_loss = bridge_contrastive_loss(self.b(s), t_ref, self.options.bridge_temperature)
        else:
            bridge_loss = F.mse_loss(self.b(s), t_ref)
        return s, t, bridge_loss, ae_loss

    def forward_params(self):
        return list(self.f.parameters()) + list(self.b.parameters())

    def target_params(self):
        return list(self.g.parameters()) + list(self.h.parameters())


def bridge_contrastive_loss(bridged: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each sample over the distinct targets in its batch (one per class present), the
    logit of target t_c being -MSE(b_i(s_i), t_c) / temperature. MSE only pulls b_i(s_i) toward its own
    target; with many classes that leaves it near a blend of them. This also pushes it away from the other
    classes' targets, as softmax cross-entropy does for BP, and stays local: it sees this block's b and t
    only. Rows of one class carry the same t_i, so classes are told apart by their targets (no labels)."""
    z, t = bridged.flatten(1), targets.flatten(1)
    same = (t.unsqueeze(1) - t.unsqueeze(0)).abs().amax(-1) <= 1e-6  # [B, B]: row j holds row i's class
    first = ~torch.tril(same, diagonal=-1).any(dim=1)  # one column per class: its first row in the batch
    logits = -(z.unsqueeze(1) - t[first].unsqueeze(0)).square().mean(-1) / temperature  # [B, classes]
    return F.cross_entropy(logits, same[:, first].float().argmax(dim=1))


@contextlib.contextmanager
def eval_mode(modules: list[nn.Module]):
    """Prediction uses BatchNorm's running statistics and leaves them alone; every submodule's own mode
    is restored after."""
    every = [m for root in modules for m in root.modules()]
    was = [m.training for m in every]
    for m in every:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(every, was):
            m.training = mode


def predict_all_exits(blocks: list[ALBlock], x: torch.Tensor) -> list[torch.Tensor]:
    """Logits of every exit k = 1..N in one pass over the f's, in eval mode: exit N is the paper's
    prediction (Eq. 7), h_1(...h_N(b_N(f_N(...f_1(x))))), and exit k stops at block k (exit_readout=targets:
    b_k(s_k) pinv(T_k) instead)."""
    bridged, s = [], x
    set_readouts(blocks)
    with eval_mode(blocks):
        for block in blocks:
            s = block(s)
            bridged.append(block.bridge(s))
        return exit_logits(blocks, bridged)


def class_targets(blocks: list[ALBlock]) -> list[torch.Tensor]:
    """t_1..t_N of every class point [C, d], in eval mode: the target path's whole image."""
    t, out = torch.arange(blocks[0].num_classes), []
    with eval_mode(blocks), torch.no_grad():
        for block in blocks:
            t = block.encode_target(block.target_input(t.to(next(block.parameters()).device)))
            out.append(t)
    return out


def set_readouts(blocks: list[ALBlock]) -> None:
    """Every block's read-out from the class targets as they are now (exit_readout=targets only)."""
    if blocks and blocks[0].reads_out:
        for block, targets in zip(blocks, class_targets(blocks)):
            block.set_readout(targets)


def exit_logits(blocks: list[ALBlock], bridged: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every exit's class scores from its b_k(s_k): the read-outs (set_readouts first) or the decoders."""
    if blocks[0].reads_out:
        return [block.read_out(b) for block, b in zip(blocks, bridged)]
    return decode_to_logits(blocks, bridged)


def decode_to_logits(blocks: list[ALBlock], ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each t_k (k = 1..N: b_k(s_k), or a target t_k) decoded down to class logits through
    h_k..h_1: h_1(sigmoid(h_2(...sigmoid(h_k(t_k)))))."""
    outs = []
    for k, t in enumerate(ts, start=1):
        for block in reversed(blocks[1:k]):
            t = block.decode(t)
        outs.append(blocks[0].decode_logits(t))
    return outs
