"""Gradient norms by depth (the sigmoid-depth experiment): BP's backpropagated gradient vanishes towards
block 1 of a deep sigmoid MLP, AL's local gradients do not; measuring them changes nothing."""
import torch

from ray_al.analysis.grad_norms import gradient_norms
from ray_al.config import ModelConfig
from ray_al.models import build_al_blocks, build_bp_twin

MODEL = ModelConfig(name="mlp", depth=8, act="sigmoid", d=64)
SHAPE = (1, 8, 8)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, *SHAPE, generator=g), torch.arange(64) % 10


def test_bp_gradients_vanish_towards_block_1_and_al_gradients_do_not():
    x, y = _batch()
    al = gradient_norms(build_al_blocks(MODEL, SHAPE, 10, seed=0), x, y)
    bp = gradient_norms(build_bp_twin(MODEL, SHAPE, 10, seed=0), x, y)
    assert len(al) == len(bp) == 8 and all(v > 0 for v in al + bp)
    assert bp[0] / bp[-1] < 1e-2                          # 17 sigmoids between the loss and block 1
    assert all(a < b for a, b in zip(bp, bp[1:]))          # shrinking all the way down
    assert al[0] / al[-1] > 5e-2 and max(al) / min(al) < 20  # each block two layers from its loss


def test_measuring_leaves_parameters_and_grads_alone():
    x, y = _batch()
    net = build_bp_twin(MODEL, SHAPE, 10, seed=0)
    blocks = build_al_blocks(MODEL, SHAPE, 10, seed=0)
    before = [p.detach().clone() for p in net.parameters()] + [p.detach().clone() for b in blocks
                                                              for p in b.parameters()]
    gradient_norms(net, x, y)
    gradient_norms(blocks, x, y)
    after = list(net.parameters()) + [p for b in blocks for p in b.parameters()]
    assert all(torch.equal(a, b) and a.grad is None for a, b in zip(after, before))
