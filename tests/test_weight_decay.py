"""optim.l2_scope: f_kernels decays the weight tensors of f's Linear/Conv layers and nothing else (the
authors' code); `all` is the single-group Adam every parameter got before the option, bitwise."""
import pytest
import torch
import torch.nn as nn

from ray_al.config import ModelConfig, OptimConfig
from ray_al.core.block_trainer import BlockTrainer
from ray_al.core.weight_decay import kernels
from ray_al.models import build_al_block
from ray_al.trainers.bp import BPTrainer
from tests.helpers import tiny_config

SHAPE = (3, 16, 16)


def _block(name="cnn", index=1):
    return build_al_block(ModelConfig(name=name, d=8), SHAPE, 10, index, seed=0)


def _moved_by_decay_alone(params, opt):
    """Zero gradients, one step: Adam moves a parameter only through its weight decay (wd x p)."""
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # no zero parameter (biases start at 0): decay must be able to move each one
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return {id(p) for p, b in zip(params, before) if not torch.equal(p, b)}


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_f_kernels_decays_only_the_weights_of_f_layers(name):
    trainer = BlockTrainer(_block(name), OptimConfig(lr=1e-2, weight_decay=0.1), 100, 1)
    block = trainer.block
    f_weights = {id(m.weight) for m in block.f.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert f_weights and {id(p) for p in kernels(block.f)} == f_weights
    moved = _moved_by_decay_alone(block.forward_params(), trainer.opt_forward)
    assert moved == f_weights  # not f's biases or BatchNorm, not the bridge b
    assert not _moved_by_decay_alone(block.target_params(), trainer.opt_target)  # g and h: never
    if name == "resnet20":
        assert any(isinstance(m, nn.BatchNorm2d) for m in block.f.modules())  # BN present, and not decayed


def test_all_decays_every_parameter():
    trainer = BlockTrainer(_block(), OptimConfig(lr=1e-2, weight_decay=0.1, l2_scope="all"), 100, 1)
    block = trainer.block
    assert _moved_by_decay_alone(block.forward_params(), trainer.opt_forward) == \
        {id(p) for p in block.forward_params()}
    assert _moved_by_decay_alone(block.target_params(), trainer.opt_target) == {id(p) for p in block.target_params()}


def test_all_reproduces_the_old_optimizer_bitwise():
    optim = OptimConfig(lr=1e-3, weight_decay=1e-2, l2_scope="all")
    new = BlockTrainer(_block(), optim, 100, 1)
    old = BlockTrainer(_block(), optim, 100, 1)
    # what BlockTrainer built before l2_scope existed
    old.opt_forward = torch.optim.Adam(old.block.forward_params(), lr=optim.lr, weight_decay=optim.weight_decay)
    old.opt_target = torch.optim.Adam(old.block.target_params(), lr=optim.lr * optim.target_lr_scale,
                                      weight_decay=optim.weight_decay)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, 32, 16, 16, generator=g), torch.rand(6, 4, 8, generator=g)
    new.train_chunk(s, t)
    old.train_chunk(s, t)
    for (name, a), b in zip(new.block.state_dict().items(), old.block.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(AssertionError):  # and the default scope trains differently at this weight decay
        scoped = BlockTrainer(_block(), OptimConfig(lr=1e-3, weight_decay=1e-2), 100, 1)
        scoped.train_chunk(s, t)
        for a, b in zip(scoped.block.state_dict().values(), old.block.state_dict().values()):
            assert torch.equal(a, b)


def test_bp_f_kernels_decays_every_linear_weight_and_nothing_else(tmp_path):
    cfg = tiny_config(tmp_path, train={"trainer": "bp"}, optim={"lr": 1e-2, "weight_decay": 0.1})
    trainer = BPTrainer(cfg, (1, 8, 8), 10, 100)
    params = list(trainer.net.parameters())
    weights = {id(m.weight) for m in trainer.net.modules() if isinstance(m, nn.Linear)}
    assert _moved_by_decay_alone(params, trainer.opt) == weights
