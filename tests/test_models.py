"""Every registered model: block shapes, finite local losses, gradients that stay inside their block,
a BP twin with the AL prediction path's parameters, and the paper's layer layout and widths."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ray_al.config import ModelConfig
from ray_al.errors import ConfigError
from ray_al.models import build_al_blocks, build_bp_twin, model_names, parameter_counts
from ray_al.models.registry import build_architecture

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 10), ((3, 32, 32), 100)]
CIFAR = (3, 32, 32)
SMALL_D = 8  # the bridges of block 1 are huge at the paper's d; the structure does not depend on d


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("shape,classes", SHAPES[:2])
def test_gradients_stay_inside_their_block(name, shape, classes):
    blocks = build_al_blocks(ModelConfig(name=name, d=8), shape, classes, seed=0)
    s, t = torch.randn(2, *shape), torch.tensor([1, 3])
    losses = []
    for block in blocks:  # s and t keep their graph: only the block itself may cut it
        s, t, bridge, ae = block.local_losses(s, t)
        assert t.shape == (2, 8) and torch.isfinite(bridge) and torch.isfinite(ae)
        losses.append(bridge + ae)
    for i, loss in enumerate(losses):
        for block in blocks:
            block.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for j, block in enumerate(blocks):
            grads = [p.grad for p in block.parameters()]
            if i == j:
                assert all(g is not None for g in grads), f"block {j + 1}: a parameter got no gradient"
                for part in (block.f, block.b, block.g, block.h):
                    assert sum(g.abs().sum() for g in (p.grad for p in part.parameters())) > 0
            else:
                assert all(g is None for g in grads), f"block {i + 1}'s loss reached block {j + 1}"


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("shape,classes", SHAPES)
def test_bp_twin_has_the_al_prediction_path_parameters(name, shape, classes):
    counts = parameter_counts(ModelConfig(name=name), shape, classes)
    assert counts["bp"] == counts["al_effective"] < counts["al_total"]


@pytest.mark.parametrize("name", model_names())
def test_bp_twin_outputs_class_logits(name):
    net = build_bp_twin(ModelConfig(name=name, d=8), (3, 32, 32), 10, seed=0)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vgg", "resnet20", "resnet32"])
def test_authors_bp_baseline_is_the_authors_network(name):
    """model.bp_baseline=authors: BN after every dense layer of the head (and every conv of VGG), VGG without
    the Dense(1024)s, ResNet pooled to 64 features; it trains, and its parameter count is reported."""
    twin = build_bp_twin(ModelConfig(name=name, d=8), CIFAR, 10, seed=0)
    net = build_bp_twin(ModelConfig(name=name, d=8, bp_baseline="authors"), CIFAR, 10, seed=0)
    layers = list(net.modules())
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [40, 8, 8, 8, 8, 10]  # Dense(5d), Dense(d), 3 x Dense(d), classes
    after = {id(a): b for a, b in zip(layers, layers[1:])}
    assert all(isinstance(after[id(m)], nn.BatchNorm1d) for m in linears[:-1])
    assert 1024 not in [m.out_features for m in linears]
    if name == "vgg":
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        assert len(convs) == 6 and all(isinstance(after[id(c)], nn.BatchNorm2d) for c in convs)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())  # the twin is BN-free
        assert linears[0].in_features == 512 * 2 * 2
    else:
        assert linears[0].in_features == 64  # global average pooling
    x, y = torch.randn(4, *CIFAR), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(net(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    counts = parameter_counts(ModelConfig(name=name), CIFAR, 10)
    assert counts["bp_authors"] not in (counts["bp"], 0)


def test_authors_bp_baseline_of_mlp_and_cnn_is_the_twin_and_others_have_none():
    for name in ("mlp", "cnn"):
        a = build_bp_twin(ModelConfig(name=name, d=8, bp_baseline="authors"), CIFAR, 10, seed=0)
        b = build_bp_twin(ModelConfig(name=name, d=8), CIFAR, 10, seed=0)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        assert "bp_authors" not in parameter_counts(ModelConfig(name=name), CIFAR, 10)
    from ray_al.models import Architecture, register

    @register("one_dense_for_baseline_test")  # registered here, after collection: no other test sees it
    def one_dense(input_shape, num_classes, act, d=None):
        return Architecture([nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 8), act())], 8)

    with pytest.raises(ConfigError, match="no BP network for model 'one_dense_for_baseline_test'"):
        build_bp_twin(ModelConfig(name="one_dense_for_baseline_test", bp_baseline="authors"), CIFAR, 10, seed=0)


def _linear_widths(net):
    return [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]


def test_mnist_mlp_prediction_path_is_the_papers():
    net = build_bp_twin(ModelConfig(name="mlp"), (1, 28, 28), 10, seed=0, device="meta")
    assert _linear_widths(net) == [1024, 1024, 5120, 1024, 1024, 10]


def test_cnn_prediction_path_is_the_papers():
    net = build_bp_twin(ModelConfig(name="cnn"), (3, 32, 32), 10, seed=0, device="meta")
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 8
    assert _linear_widths(net) == [1280, 256, 256, 256, 256, 10]
    assert _linear_widths(build_bp_twin(ModelConfig(name="cnn"), (3, 32, 32), 100, 0, "meta"))[:2] == [2500, 500]


def test_cifar_mlp_width():
    assert _linear_widths(build_bp_twin(ModelConfig(name="mlp"), (3, 32, 32), 10, 0, "meta"))[:2] == [3000, 3000]


def test_unknown_model_and_option_and_shape_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build_al_blocks(ModelConfig(name="nope"), (1, 8, 8), 10, seed=0)
    with pytest.raises(ConfigError, match="model 'cnn' has 4 blocks, the config asks for 8"):
        build_al_blocks(ModelConfig(name="cnn", depth=8), (1, 8, 8), 10, seed=0)
    assert len(build_al_blocks(ModelConfig(name="cnn", depth=4, d=4), (1, 8, 8), 10, seed=0)) == 4
    with pytest.raises(ConfigError, match="does not fit the model"):
        build_al_blocks(ModelConfig(name="cnn"), (1, 1, 1, 1), 10, seed=0)


def _chain(blocks, x, y):
    s, t, out = x, y, []
    for block in blocks:
        s, t, lb, la = block.local_losses(s, t)
        out.append((s, t, lb, la))
    return out


@pytest.mark.parametrize("name", model_names())
def test_blocks_shapes_losses_and_local_gradients(name):
    torch.manual_seed(0)
    model = ModelConfig(name=name, d=SMALL_D)
    blocks = build_al_blocks(model, CIFAR, 10, seed=0)
    x, y = torch.randn(2, *CIFAR), torch.tensor([3, 7])
    outs = _chain(blocks, x, y)
    assert len(outs) == len(blocks) >= 2
    for s, t, lb, la in outs:
        assert s.shape[0] == 2 and t.shape == (2, SMALL_D)
        assert torch.isfinite(lb) and torch.isfinite(la)
    for j, (_, _, lb, la) in enumerate(outs):
        for block in blocks:
            block.zero_grad(set_to_none=True)
        (lb + la).backward(retain_graph=True)
        for i, block in enumerate(blocks):
            for pname, p in block.named_parameters():
                if i == j:
                    assert p.grad is not None, f"block {j + 1}: {pname} got no gradient"
                    assert torch.isfinite(p.grad).all(), f"block {j + 1}: {pname} got a non-finite gradient"
                    assert p.grad.abs().sum() > 0, f"block {j + 1}: {pname} got a zero gradient"
                else:
                    assert p.grad is None, f"block {j + 1}'s losses reached block {i + 1}'s {pname}"


@pytest.mark.parametrize("name", model_names())
def test_bp_twin_trains_end_to_end(name):
    net = build_bp_twin(ModelConfig(name=name, d=SMALL_D), CIFAR, 10, seed=0)
    logits = net(torch.randn(2, *CIFAR))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name,classes,d", [("vgg", 10, 300), ("vgg", 100, 500), ("resnet20", 10, 300),
                                            ("resnet32", 100, 500), ("cnn", 10, 256), ("cnn", 100, 500),
                                            ("mlp", 10, 3000)])
def test_paper_d(name, classes, d):
    with torch.device("meta"):
        assert build_architecture(name, CIFAR, classes, nn.ELU).d == d


def _stage_shapes(name):
    with torch.device("meta"):
        arch = build_architecture(name, CIFAR, 10, nn.ELU)
        s, shapes = torch.empty(2, *CIFAR), []
        for stage in arch.stages:
            s = stage(s)
            shapes.append(tuple(s.shape[1:]))
    return arch, shapes


def test_vgg_layout():
    arch, shapes = _stage_shapes("vgg")
    assert shapes == [(256, 16, 16), (512, 8, 8), (512, 2, 2), (1024,)]
    convs = [m.out_channels for m in nn.Sequential(*arch.stages).modules() if isinstance(m, nn.Conv2d)]
    assert convs == [128, 256, 256, 512, 512, 512]
    assert not any(isinstance(m, nn.BatchNorm2d) for stage in arch.stages for m in stage.modules())


@pytest.mark.parametrize("name,convs3x3", [("resnet20", 19), ("resnet32", 31)])
def test_resnet_layout(name, convs3x3):
    arch, shapes = _stage_shapes(name)
    assert shapes == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    convs = [m for m in nn.Sequential(*arch.stages).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == convs3x3  # ResNet-20 = 19 convolutions + the classifier


def test_resnet_block_is_the_authors_resblock():
    """CIFAR10/models.py `resBlock` (5069adc): conv-BN-act, conv-BN-act, + shortcut, act; the strided
    shortcut is a 1x1 conv with a bias and no BN. The counts lock that choice (configs/README.md)."""
    from ray_al.models.resnet import BasicBlock

    block = BasicBlock(16, 32, 2, nn.ELU)
    assert [type(m) for m in block.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ELU] * 2
    assert isinstance(block.shortcut, nn.Conv2d) and block.shortcut.bias is not None
    assert block.shortcut.kernel_size == (1, 1) and block.shortcut.stride == (2, 2)
    assert isinstance(BasicBlock(16, 16, 1, nn.ELU).shortcut, nn.Identity)
    x = torch.randn(2, 16, 8, 8)
    body = block.body(x)
    assert body.min() > -1  # ELU after the second BN: the body's output is already activated
    assert torch.equal(block(x), F.elu(body + block.shortcut(x)))
    counts = {(n, c): parameter_counts(ModelConfig(name=n), CIFAR, c)
              for n in ("resnet20", "resnet32") for c in (10, 100)}
    assert {k: (v["al_effective"], v["bp_authors"]) for k, v in counts.items()} == {
        ("resnet20", 10): (7_141_438, 1_098_838), ("resnet20", 100): (12_566_328, 2_495_328),
        ("resnet32", 10): (7_335_870, 1_293_270), ("resnet32", 100): (12_760_760, 2_689_760)}


def test_batch_norm_state_belongs_to_its_block_and_eval_uses_it():
    blocks = build_al_blocks(ModelConfig(name="resnet20", d=SMALL_D), CIFAR, 10, seed=0)
    keys = blocks[0].state_dict().keys()
    assert any(k.startswith("f.") and k.endswith("running_mean") for k in keys)
    x = torch.randn(4, *CIFAR) * 3 + 1
    blocks[0].eval()
    before = blocks[0](x)
    blocks[0].train()
    blocks[0].local_losses(x, torch.tensor([0, 1, 2, 3]))  # updates running statistics
    blocks[0].eval()
    after = blocks[0](x)
    assert not torch.allclose(before, after)
    assert torch.equal(after, blocks[0](x))  # eval mode: deterministic, batch-independent
    assert torch.allclose(blocks[0](x[:1]), after[:1], atol=1e-5)


def test_blocks_are_seeded_and_he_initialised():
    a = build_al_blocks(ModelConfig(name="vgg", d=SMALL_D), CIFAR, 10, seed=1)
    b = build_al_blocks(ModelConfig(name="vgg", d=SMALL_D), CIFAR, 10, seed=1)
    for ba, bb in zip(a, b):
        for pa, pb in zip(ba.parameters(), bb.parameters()):
            assert torch.equal(pa, pb)
    w = a[1].f[0].weight.detach()  # conv 256 -> 256: He-normal std = sqrt(2 / fan_in)
    assert abs(float(w.std()) - math.sqrt(2 / (256 * 9))) < 0.05 * math.sqrt(2 / (256 * 9))


def test_spread_class_codes_start_the_class_targets_far_apart_and_are_seeded():
    from ray_al.core.blocks import class_targets

    he = build_al_blocks(ModelConfig(name="mlp", d=256), (1, 8, 8), 100, seed=1)
    spread = build_al_blocks(ModelConfig(name="mlp", d=256, class_code_std=3.0), (1, 8, 8), 100, seed=1)
    again = build_al_blocks(ModelConfig(name="mlp", d=256, class_code_std=3.0), (1, 8, 8), 100, seed=1)
    assert abs(float(spread[0].g.weight.detach().std()) - 3.0) < 0.1 and not spread[0].g.bias.detach().any()
    assert all(torch.equal(p, q) for x, y in zip(spread, again) for p, q in zip(x.parameters(), y.parameters()))
    assert not torch.equal(spread[1].g.weight, he[1].g.weight)
    distance = [[float(torch.pdist(t).mean()) for t in class_targets(blocks)] for blocks in (he, spread)]
    assert distance[1][0] > 5 * distance[0][0] and distance[1][1] > 5 * distance[0][1]  # every depth
    assert distance[1][1] > 0.5 * distance[1][0]  # and not shrinking with depth (He's g_2 would: ~1/3)
