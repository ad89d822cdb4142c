"""Every registered model: shapes, finite local losses, gradients that stay inside their block,
and the BP twin's parameter count equal to the AL prediction path's."""
import pytest
import torch
import torch.nn as nn

from ray_al.config import ModelConfig
from ray_al.errors import ConfigError
from ray_al.models import build_al_blocks, build_bp_twin, model_names, parameter_counts

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 10), ((3, 32, 32), 100)]


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
