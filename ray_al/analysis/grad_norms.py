"""Gradient norms by depth: what each block's f receives, AL against BP (the sigmoid-depth experiment).

AL: block i's f_i is trained by its bridge loss L_i alone, so its gradient is the local one, two layers
deep (f_i, then b_i). BP: f_i's gradient is the cross-entropy's, backpropagated through every layer above
it (f_{i+1}..f_N, b_N, h_N..h_1). Vanishing gradients show as BP's norms falling towards block 1 while
AL's stay of one order. Nothing here changes parameters, optimizer state or .grad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def al_gradient_norms(blocks, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||d L_i / d theta(f_i)|| for i = 1..N on the batch (x, y); inputs to each block arrive detached."""
    norms, s, t = [], x, y
    with torch.enable_grad():
        for block in blocks:
            s, t, bridge_loss, _ = block.local_losses(s.detach(), t.detach())
            norms.append(_norm(torch.autograd.grad(bridge_loss, list(block.f.parameters()))))
    return norms


def bp_gradient_norms(net, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||d CE / d theta(f_i)|| for i = 1..N on the batch (x, y): the stages s1..sN of a models.BPTwin."""
    stages = [getattr(net, f"s{i}") for i in range(1, net.n_blocks + 1)]
    with torch.enable_grad():
        loss = F.cross_entropy(net(x), y)
        params = [list(stage.parameters()) for stage in stages]
        grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
    norms, k = [], 0
    for ps in params:
        norms.append(_norm(grads[k:k + len(ps)]))
        k += len(ps)
    return norms


def gradient_norms(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32) -> list[float]:
    """Mean over the batches of (x, y) of the per-block norms; `model` is a list of ALBlocks or a BP twin."""
    fn = al_gradient_norms if isinstance(model, list) else bp_gradient_norms
    device = next((model[0] if isinstance(model, list) else model).parameters()).device
    runs = [fn(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
            for i in range(0, len(x), batch_size)]
    return [sum(col) / len(runs) for col in zip(*runs)]
