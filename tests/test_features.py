"""Class-distance metafeatures against a hand computation; named layers of AL and BP models;
the t-SNE figure is a PNG with one row per model and one column per layer."""
import struct

import pytest
import torch

from ray_al.analysis.features import al_features, bp_features, class_distances, layer_names, paper_layers, tsne_figure
from ray_al.config import ModelConfig
from ray_al.errors import ConfigError
from ray_al.models import build_al_blocks, build_bp_twin


def test_class_distances_by_hand():
    x = torch.tensor([[0., 0.], [3., 4.], [10., 0.], [10., 2.], [10., 4.]])
    y = torch.tensor([0, 0, 1, 1, 1])
    d = class_distances(x, y)
    # class 0: one pair at distance 5; class 1: pairs at 2, 4, 2 -> 8/3; centroids (1.5, 2) and (10, 2)
    assert d["intra"] == pytest.approx((5 + 8 / 3) / 2)
    assert d["inter"] == pytest.approx(8.5)
    assert d["ratio"] == pytest.approx(8.5 / ((5 + 8 / 3) / 2))


def test_class_distances_flatten_and_scale():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, 3, 3, generator=g), torch.arange(40) % 4
    a, b = class_distances(x, y), class_distances(3 * x, y)
    assert b["intra"] == pytest.approx(3 * a["intra"]) and b["ratio"] == pytest.approx(a["ratio"])
    separated = class_distances(x + 10 * y[:, None, None, None].float(), y)
    assert separated["ratio"] > 5 * a["ratio"]


def test_layer_names_and_paper_choices():
    assert layer_names(2) == ["s1", "s2", "bridge", "dec2", "out"]
    assert paper_layers("mlp", 2) == ["s2", "bridge", "out"]    # MLP hidden 2, 4, output
    assert paper_layers("cnn", 4) == ["s2", "s4", "dec3"]       # CNN hidden 4, 8, 12


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_same_names_pick_the_same_layers_in_al_and_bp(name):
    model = ModelConfig(name=name, d=6)
    shape, x = (1, 8, 8), torch.randn(7, 1, 8, 8)
    blocks = build_al_blocks(model, shape, 10, seed=0)
    net = build_bp_twin(model, shape, 10, seed=0)
    names = layer_names(len(blocks))
    al, bp = al_features(blocks, x, names + ["b1"], batch_size=3), bp_features(net, x, names, batch_size=3)
    for n in names:
        assert al[n].shape == bp[n].shape, n
    assert al["out"].shape == (7, 10) and al["b1"].shape == (7, 6)
    # the AL logits are the paper's prediction h_1(...h_N(b_N(f_N(...)))), the last exit
    from ray_al.core.blocks import predict_all_exits
    assert torch.allclose(al["out"], predict_all_exits(blocks, x)[-1], atol=1e-6)
    assert torch.allclose(bp["out"], net(x), atol=1e-6)
    assert [child for child, _ in net.named_children()] == names  # the BP twin's layers carry the names
    with pytest.raises(ConfigError, match="unknown layer"):
        al_features(blocks, x, ["s9"])


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_tsne_figure_is_a_png_with_one_panel_per_model_and_layer(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(45) % 3
    def feats():
        return {"s1": torch.randn(45, 5, generator=g) + y[:, None], "s2": torch.randn(45, 70, generator=g),
                "out": torch.randn(45, 3, generator=g)}
    path = tmp_path / "tsne.png"
    titles = tsne_figure([("BP", feats()), ("AL", feats())], y, path, max_iter=250)
    assert titles == ["BP: s1", "BP: s2", "BP: out", "AL: s1", "AL: s2", "AL: out"]
    width, height = _png_size(path)
    assert width == 3 * 4 * 80 and height == 2 * 4 * 80  # 4-inch panels at 80 dpi


def test_sample_indices_are_a_seeded_random_draw():
    from ray_al.analysis.features import sample_indices
    y = torch.arange(1000) // 100  # sorted by class, like CIFAR-10's test split
    idx = sample_indices(1000, 300)
    assert torch.equal(idx, sample_indices(1000, 300)) and len(idx.unique()) == 300
    assert len(y[idx[:50]].unique()) >= 8  # even a short prefix spans the classes
