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


def test_vgg_dense_1024s_get_no_l2_as_in_the_authors_code():
    """VGG_AL passes the regulariser of its two Dense(1024) as `use_bias` (5069adc): f_kernels decays the
    six convs of f and not those two layers; scope `all` still decays them."""
    block = build_al_block(ModelConfig(name="vgg", d=8), (3, 32, 32), 10, 3, seed=0)
    dense = [m.weight for m in block.f.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == 2 and not {id(p) for p in kernels(block.f)} & {id(p) for p in dense}
    convs = build_al_block(ModelConfig(name="vgg", d=8), (3, 32, 32), 10, 0, seed=0)
    assert len(kernels(convs.f)) == 2  # block 1: conv128, conv256, both decayed
    trainer = BlockTrainer(block, OptimConfig(lr=1e-2, weight_decay=0.1), 100, 1)
    assert not _moved_by_decay_alone(block.forward_params(), trainer.opt_forward)
    trainer = BlockTrainer(block, OptimConfig(lr=1e-2, weight_decay=0.1, l2_scope="all"), 100, 1)
    assert {id(p) for p in dense} <= _moved_by_decay_alone(block.forward_params(), trainer.opt_forward)


def test_authors_bp_vgg_head_has_no_l2_and_glorot_weights(tmp_path):
    """The authors' BP-VGG: L2 on its six convs only; its dense layers start from Glorot-uniform weights
    (bound sqrt(6 / (fan_in + fan_out))), the BP-ResNet head from He-normal ones, with L2."""
    cfg = tiny_config(tmp_path, data={"source": "synthetic", "synthetic_shape": [3, 32, 32]},
                      model={"name": "vgg", "d": 300, "bp_baseline": "authors"}, train={"trainer": "bp"},
                      optim={"lr": 1e-2, "weight_decay": 0.1})
    trainer = BPTrainer(cfg, (3, 32, 32), 10, 100)
    convs = {id(m.weight) for m in trainer.net.modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 6 and {id(p) for p in kernels(trainer.net)} == convs
    assert _moved_by_decay_alone(list(trainer.net.parameters()), trainer.opt) == convs
    fresh = BPTrainer(cfg, (3, 32, 32), 10, 100).net
    dense = [m for m in fresh.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == 6
    for m in dense:
        bound = (6 / (m.in_features + m.out_features)) ** 0.5
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.1)
    resnet = BPTrainer(tiny_config(tmp_path, data={"source": "synthetic", "synthetic_shape": [3, 32, 32]},
                                   model={"name": "resnet20", "d": 300, "bp_baseline": "authors"},
                                   train={"trainer": "bp"}), (3, 32, 32), 10, 100).net
    head = resnet.bridge[2]  # pool, flatten, Dense(5d): 64 -> 1500, He-normal std sqrt(2 / 64)
    assert isinstance(head, nn.Linear) and float(head.weight.detach().std()) == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    assert any(p is head.weight for p in kernels(resnet))
