"""Build the AL blocks of a registered model, or its backprop twin.

Modules are created on the meta device (free), then materialised and He-initialised under a
seed per block, so any process can build block i alone and get the same weights.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn as nn

from ray_al.config import ModelConfig
from ray_al.core.blocks import ALBlock, BlockOptions
from ray_al.errors import ConfigError
from ray_al.models import authors_bp, cnn, mlp, resnet, vgg  # noqa: F401  (cnn..vgg register the builders)
from ray_al.models.bridges import build_bridge
from ray_al.models.registry import Architecture, build_architecture, import_model_module, model_names, register

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

__all__ = ["build_al_block", "build_al_blocks", "build_bp_twin", "block_count", "parameter_counts",
           "model_names", "register", "Architecture", "BPTwin"]


def he_init(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if getattr(m, "glorot", False):  # the authors' BP-VGG head (models/authors_bp.py)
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
    return module


def _materialise(module: nn.Module, seed: int, device) -> nn.Module:
    """Allocate a meta-device module and He-initialise it on the CPU, so weights do not
    depend on the device (CUDA draws other random numbers)."""
    if str(device) == "meta":
        return module
    module = module.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        he_init(module)
    return module.to(device)


def _architecture(model: ModelConfig, input_shape, num_classes, for_bp: bool) -> Architecture:
    act = ACTIVATIONS[model.act or ("relu" if for_bp else "elu")]
    import_model_module(model.module)
    with torch.device("meta"):
        return build_architecture(model.name, input_shape, num_classes, act, d=model.d, depth=model.depth)


def _stage_shapes(stages, input_shape) -> list[tuple[int, ...]]:
    """Output shape (without batch) of every stage, traced on the meta device."""
    shapes, s = [], torch.empty(2, *input_shape, device="meta")
    for stage in stages:
        try:
            s = stage(s)
        except RuntimeError as e:
            raise ConfigError(f"input shape {tuple(input_shape)} does not fit the model: {str(e).splitlines()[0]}") \
                from None
        shapes.append(tuple(s.shape[1:]))
    return shapes


def block_count(model: ModelConfig, input_shape, num_classes) -> int:
    return len(_architecture(model, input_shape, num_classes, for_bp=False).stages)


def build_al_block(model: ModelConfig, input_shape, num_classes: int, index: int, seed: int,
                   device: str | torch.device = "cpu") -> ALBlock:
    """Block `index` (0-based) alone, on `device`, initialised from (seed, index)."""
    arch = _architecture(model, input_shape, num_classes, for_bp=False)
    shapes = _stage_shapes(arch.stages, input_shape)
    d, t_in = arch.d, (num_classes if index == 0 else arch.d)
    with torch.device("meta"):
        block = ALBlock(
            f=arch.stages[index],
            g=nn.Linear(t_in, d),
            h=nn.Linear(d, t_in),
            b=build_bridge(model.bridge, shapes[index], d, nn.Sigmoid),
            num_classes=num_classes, is_first=index == 0,
            options=BlockOptions(model.bridge_grad_to_g, model.first_decoder_ce, model.exit_readout,
                                 model.bridge_loss, model.bridge_temperature),
        )
    block = _materialise(block, seed * 1_000_003 + index, device)
    if model.class_code_std and str(device) != "meta":
        _spread_class_codes(block.g, model.class_code_std, index == 0, seed * 1_000_003 + index)
    return block


@torch.no_grad()
def _spread_class_codes(g: nn.Linear, std: float, first: bool, seed: int) -> None:
    """He-initialised, every t_1 is about 0.5 (g_1's column c is class c's code before the sigmoid) and
    the C class targets nearly coincide at every depth until warm-up separates them. Here g_1's weights
    are drawn at `std` (~3: t_1 are near-binary random codes, far apart) and every later g_i so that its
    pre-activation keeps that spread: with t_{i-1} - 1/2 about +-1/2 in each of its d_in entries, weights
    at 2 std / sqrt(d_in) and the bias centring them. Drawn on the CPU from the seed alone."""
    generator = torch.Generator().manual_seed(seed + 7919)
    scale = std if first else 2 * std / g.in_features ** 0.5
    g.weight.copy_(torch.randn(g.weight.shape, generator=generator) * scale)
    g.bias.copy_(torch.zeros_like(g.bias) if first else -0.5 * g.weight.sum(dim=1))


def build_al_blocks(model: ModelConfig, input_shape, num_classes: int, seed: int,
                    device: str | torch.device = "cpu") -> list[ALBlock]:
    n = block_count(model, input_shape, num_classes)
    return [build_al_block(model, input_shape, num_classes, i, seed, device) for i in range(n)]


class BPTwin(nn.Sequential):
    """The AL prediction path f_1..f_N, b_N, h_N..h_1 as one network trained end to end. Its layers
    carry the names an AL model's do (metrics.layer_names): s1..sN (after f_i), bridge (b_N),
    dec{N}..dec2 (after h_k and its activation), out (the logits)."""

    def __init__(self, stages: list[nn.Module], bridge: nn.Module, decoders: list[nn.Module], out: nn.Module):
        n = len(stages)
        layers = [(f"s{i}", stage) for i, stage in enumerate(stages, start=1)] + [("bridge", bridge)]
        layers += [(f"dec{k}", dec) for k, dec in zip(range(n, 1, -1), decoders)] + [("out", out)]
        super().__init__(OrderedDict(layers))
        self.n_blocks = n


def build_bp_twin(model: ModelConfig, input_shape, num_classes: int, seed: int,
                  device: str | torch.device = "cpu") -> BPTwin:
    """The BP baseline of a model, ReLU unless model.act says otherwise: its AL prediction path (the twin),
    or with model.bp_baseline=authors the authors' BP network (models/authors_bp.py)."""
    arch = _architecture(model, input_shape, num_classes, for_bp=True)
    act = ACTIVATIONS[model.act or "relu"]
    if model.bp_baseline == "authors" and model.name not in authors_bp.SAME_AS_TWIN:
        if model.name not in authors_bp.BUILDERS:
            known = sorted(authors_bp.BUILDERS.keys() | authors_bp.SAME_AS_TWIN)
            raise ConfigError(f"model.bp_baseline=authors: the authors' code has no BP network for model "
                              f"'{model.name}' (it has: {', '.join(known)})")
        with torch.device("meta"):
            net = BPTwin(*authors_bp.BUILDERS[model.name](arch, input_shape, num_classes, act))
        return _materialise(net, seed, device)
    shapes = _stage_shapes(arch.stages, input_shape)
    d = arch.d
    with torch.device("meta"):
        decoders = [nn.Sequential(nn.Linear(d, d), act()) for _ in range(len(arch.stages) - 1)]
        # the twin is the AL prediction path, so its head is b_N's variant (model.bridge=dense: the standard twin)
        net = BPTwin(arch.stages, build_bridge(model.bridge, shapes[-1], d, act), decoders,
                     nn.Linear(d, num_classes))
    return _materialise(net, seed, device)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: ModelConfig, input_shape, num_classes: int) -> dict[str, int]:
    """AL total, AL effective (the prediction path f_1..f_N, b_N, h_N..h_1), BP twin and, where the
    authors' code has its own BP network (models/authors_bp.py), BP authors parameter counts, from the
    modules built on the meta device (no memory)."""
    blocks = build_al_blocks(model, input_shape, num_classes, seed=0, device="meta")
    effective = sum(_count(b.f) + _count(b.h) for b in blocks) + _count(blocks[-1].b)
    bp = {name: _count(build_bp_twin(dataclasses.replace(model, bp_baseline=name), input_shape, num_classes,
                                     seed=0, device="meta"))
          for name in ("twin", "authors") if name == "twin" or model.name in authors_bp.BUILDERS}
    return {"al_total": sum(_count(b) for b in blocks), "al_effective": effective, "bp": bp["twin"],
            **({"bp_authors": bp["authors"]} if "authors" in bp else {})}
