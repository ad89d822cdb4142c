"""model.bridge: the paper's dense bridge unchanged, the light variants small, local and shared with the
BP twin's head; and the per-block timing line (ray_al/run/block_times.py)."""
import pytest
import torch
import torch.nn as nn

from ray_al.config import CHOICES, ModelConfig, load_config
from ray_al.errors import ConfigError
from ray_al.models import build_al_block, build_al_blocks, build_bp_twin, model_names, parameter_counts
from ray_al.models.bridges import BRIDGES, POOLED_FEATURES, WIDE_FEATURES, build_bridge, pooled_size
from ray_al.run.block_times import BlockTimes, format_block_times

CIFAR = (3, 32, 32)
LIGHT = [b for b in BRIDGES if b != "dense"]


def test_config_names_every_bridge_and_refuses_others_in_one_line(tmp_path):
    assert CHOICES["model.bridge"] == set(BRIDGES) and ModelConfig().bridge == "dense"
    path = tmp_path / "bad.yaml"
    path.write_text("model: {bridge: huge}")
    with pytest.raises(ConfigError, match="model.bridge: 'huge' is not one of conv1x1, dense, narrow, pooled") as e:
        load_config(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.bridge: 'huge' is not one of"):
        build_bridge("huge", (4,), 8, nn.Sigmoid)


def test_dense_is_the_papers_bridge():
    b = build_al_block(ModelConfig(name="cnn"), CIFAR, 10, 0, seed=0, device="meta").b
    assert [type(m) for m in b] == [nn.Flatten, nn.Linear, nn.Sigmoid, nn.Linear, nn.Sigmoid]
    assert (b[1].in_features, b[1].out_features, b[3].out_features) == (32 * 32 * 32, 5 * 256, 256)


@pytest.mark.parametrize("name", ["cnn", "vgg", "resnet20"])
@pytest.mark.parametrize("bridge", ["pooled", "conv1x1"])
def test_light_bridges_see_at_most_the_pooled_features(name, bridge):
    for block in build_al_blocks(ModelConfig(name=name, bridge=bridge), CIFAR, 10, seed=0, device="meta"):
        first = next(m for m in block.b if isinstance(m, nn.Linear))
        assert first.in_features <= POOLED_FEATURES
    for block in build_al_blocks(ModelConfig(name=name, bridge="wide"), CIFAR, 10, seed=0, device="meta"):
        first = next(m for m in block.b if isinstance(m, nn.Linear))
        assert first.in_features <= WIDE_FEATURES


def test_pooled_size_divides_the_map_and_keeps_its_aspect():
    assert pooled_size(32, 32, 32) == (4, 4)     # 512 features; 5 x 5 would not divide 32
    assert pooled_size(8, 32, 32) == (8, 8)
    assert pooled_size(16, 8, 8) == (8, 8)       # small enough already: no pooling
    assert pooled_size(512, 2, 2) == (1, 1)
    assert pooled_size(8, 32, 16) == (16, 8)
    assert pooled_size(4096, 4, 4) == (1, 1)     # nothing fits: global pooling


def test_a_light_bridge_on_a_vector_is_narrow():
    for bridge in LIGHT:
        b = build_bridge(bridge, (3000,), 3000, nn.Sigmoid)
        assert [m.out_features for m in b if isinstance(m, nn.Linear)] == [3000, 3000]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("bridge", LIGHT)
def test_light_bridges_keep_gradients_inside_their_block(name, bridge):
    """No gradient crosses a block: s_{i-1} arrives with graph and gets none from block i's losses."""
    blocks = build_al_blocks(ModelConfig(name=name, d=8, bridge=bridge), CIFAR, 10, seed=0)
    s, t = torch.randn(2, *CIFAR), torch.tensor([1, 3])
    for block in blocks:
        s_in = s.detach().requires_grad_()
        s, t, bridge_loss, ae_loss = block.local_losses(s_in, t)
        (bridge_loss + ae_loss).backward()
        assert s_in.grad is None and bridge_loss.isfinite()
        assert all(p.grad is not None for p in block.b.parameters())


@pytest.mark.parametrize("bridge", LIGHT)
def test_bp_twin_head_is_the_last_blocks_bridge(bridge):
    model = ModelConfig(name="cnn", bridge=bridge)
    counts = parameter_counts(model, CIFAR, 10)
    # wide leaves the CNN's last map (64 x 8 x 8) unpooled: its head is the dense one
    assert counts["bp"] == counts["al_effective"] <= parameter_counts(ModelConfig(name="cnn"), CIFAR, 10)["bp"]
    twin = build_bp_twin(ModelConfig(name="cnn", d=8, bridge=bridge), CIFAR, 10, seed=0)
    assert twin(torch.randn(2, *CIFAR)).shape == (2, 10)


def test_light_bridges_are_a_small_share_of_the_dense_ones():
    def bridge_params(bridge):
        blocks = build_al_blocks(ModelConfig(name="cnn", bridge=bridge), CIFAR, 10, seed=0, device="meta")
        return sum(p.numel() for b in blocks for p in b.b.parameters())
    assert bridge_params("pooled") < bridge_params("dense") / 10


def test_block_times_line_names_the_slowest_block_once():
    lines = []
    times = BlockTimes(lines.append, measure=2)
    chunk = [{"block": 1, "steps": 4, "compute_s": 0.4}, {"block": 2, "steps": 4, "compute_s": 0.8}]
    for _ in range(5):
        times([dict(st) for st in chunk])
    times.flush()
    assert lines == ["block times per step: 1: 100.0 ms, 2: 200.0 ms; critical path: block 2"]
    assert format_block_times([12.1, 4.0, 7.7, 2.2]).endswith("critical path: block 1")
    one = BlockTimes(lines.append)
    one([{"block": 1, "steps": 4, "compute_s": 1.0}])  # the BP twin: no pipeline, no line
    one.flush()
    assert len(lines) == 1
