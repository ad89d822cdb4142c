"""The paper's published figures (Kao & Chen 2021, Tables 1-4, 200 epochs) and how a run's
config maps onto a cell of those tables. These numbers are the paper's, never ours."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ray_al.config import SHIPPED_CONFIGS, Config, load_config, settings

# (dataset, model) -> {"bp": %, "al": %}
RESULTS: dict[tuple[str, str], dict[str, float]] = {
    ("mnist", "mlp"): {"bp": 98.6, "al": 98.7},
    ("mnist", "cnn"): {"bp": 99.4, "al": 99.5},
    ("cifar10", "mlp"): {"bp": 61.6, "al": 64.2},
    ("cifar10", "cnn"): {"bp": 85.4, "al": 86.0},
    ("cifar10", "resnet20"): {"bp": 90.6, "al": 89.3},
    ("cifar10", "resnet32"): {"bp": 91.9, "al": 88.8},
    ("cifar10", "vgg"): {"bp": 93.1, "al": 92.6},
    ("cifar100", "mlp"): {"bp": 26.9, "al": 31.2},
    ("cifar100", "cnn"): {"bp": 51.0, "al": 52.4},
    ("cifar100", "resnet20"): {"bp": 63.8, "al": 60.2},
    ("cifar100", "resnet32"): {"bp": 63.8, "al": 60.5},
    ("cifar100", "vgg"): {"bp": 70.8, "al": 67.5},
}
# Table 4: (dataset, model) -> {"bp"|"al": (inter-class distance, intra-class distance, inter / intra)}. The paper
# does not name the layer; we infer the output from the magnitudes: BP's logits, AL's output h_1 with its sigmoid
# (the authors' AL inference ends in that sigmoid; the AL values below 1.2 fit points in [0, 1]^C).
TABLE4: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {
    ("cifar10", "mlp"): {"bp": (39.36, 67.97, 0.58), "al": (0.73, 0.66, 1.11)},
    ("cifar10", "cnn"): {"bp": (41.82, 26.87, 1.56), "al": (1.17, 0.36, 3.25)},
    ("cifar100", "mlp"): {"bp": (114.42, 342.65, 0.33), "al": (0.23, 0.28, 0.82)},
    ("cifar100", "cnn"): {"bp": (114.71, 163.43, 0.70), "al": (0.55, 0.51, 1.08)},
}
TABLE4_LAYER = {"bp": "out", "al": "out_sigmoid"}  # where ours are measured to compare with Table 4
PAPER_EPOCHS = 200
PAPER_DEPTH = {"mlp": 2, "cnn": 4, "vgg": 4, "resnet20": 4, "resnet32": 4}  # AL blocks
TABLES = {"mnist": "Table 1", "cifar10": "Table 2", "cifar100": "Table 3"}
DATASETS = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mlp": "MLP", "cnn": "CNN",
         "resnet20": "ResNet-20", "resnet32": "ResNet-32", "vgg": "VGG"}


def dataset_key(cfg: Config) -> str | None:
    """mnist | cifar10 | cifar100 from the torchvision name or the Parquet folder's name; None otherwise."""
    if cfg.data.source == "torchvision":
        raw = cfg.data.name or ""
    elif cfg.data.source == "parquet" and cfg.data.path:
        raw = Path(cfg.data.path).name
    else:
        return None
    raw = raw.lower().replace("-", "").replace("_", "")
    for key in ("cifar100", "cifar10", "mnist"):
        if raw.startswith(key):
            return key
    return None


def method(cfg: Config) -> str:
    return "bp" if cfg.train.trainer == "bp" else "al"


def paper_result(cfg: Config) -> float | None:
    """The paper's test accuracy (%) for this run's cell, or None where the paper has none
    (another dataset, a changed depth or activation)."""
    if cfg.model.act is not None or cfg.model.depth not in (None, PAPER_DEPTH.get(cfg.model.name)):
        return None
    cell = RESULTS.get((dataset_key(cfg), cfg.model.name))
    return cell[method(cfg)] if cell else None


# -- what a run changes from its cell's paper config ----------------------------------------------
# Settings that choose where a run runs, what it logs or how fast, never what it computes. Every other
# setting, a key added later included, is compared with the paper config's value.
NOT_COMPARED_KEYS = {"run_dir", "name", "data.source", "data.loader", "data.path", "data.name", "data.download",
                     "data.cache_dir", "data.factory", "data.factory_args", "data.image_size", "data.test_fraction",
                     "model.name", "model.module", "train.trainer", "train.chunk_size", "train.max_inflight_chunks",
                     "train.seed", "train.threads", "train.device", "train.eval_batch_size", "train.log_every_s",
                     "train.compile", "train.adam", "train.pin_memory", "train.channels_last"}
NOT_COMPARED_PREFIXES = ("ray.", "log.", "checkpoint.", "data.synthetic_")
# settings one method never reads (the BP twin has no target path; AL has no BP baseline)
UNUSED_BY = {"al": {"model.bp_baseline"},
             "bp": {"model.target_warmup_steps", "model.target_warmup_lr", "model.target_warmup_until",
                    "model.target_warmup_check_every", "model.bridge_grad_to_g",
                    "model.first_decoder_ce", "model.exit_readout", "optim.target_lr_scale"}}


@lru_cache(maxsize=None)
def paper_config(dataset: str, model: str, method_: str) -> Config | None:
    """configs/paper/<dataset>_<model>_<al|bp>.yaml, or None where the paper has no such cell."""
    path = SHIPPED_CONFIGS / "paper" / f"{dataset}_{model}_{method_}.yaml"
    return load_config(path) if path.is_file() else None


def _effective(cfg: Config, dataset: str) -> dict[str, Any]:
    """Settings whose None means "the paper's value for this model and dataset", resolved, so that a run
    spelling out the paper's own d (or depth, activation, classes) matches a paper config that leaves it None."""
    import torch
    import torch.nn as nn

    from ray_al.errors import ConfigError
    from ray_al.models.registry import build_architecture
    shape, classes = DATASETS[dataset]
    found = {"data.num_classes": cfg.data.num_classes or classes,
             "model.act": cfg.model.act or ("relu" if method(cfg) == "bp" else "elu")}
    try:
        with torch.device("meta"):
            arch = build_architecture(cfg.model.name, shape, classes, nn.ELU, d=cfg.model.d, depth=cfg.model.depth)
    except ConfigError:  # a depth this model cannot have: compared as written
        return found
    return found | {"model.d": arch.d, "model.depth": len(arch.stages)}


def deviations(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, this run's value, the paper config's value) of every compared setting where the run differs
    from its cell's configs/paper file; [] for a paper run, and for a run without a paper cell."""
    dataset = dataset_key(cfg)
    paper = paper_config(dataset, cfg.model.name, method(cfg)) if dataset else None
    if paper is None:
        return []
    ours, theirs = settings(cfg) | _effective(cfg, dataset), settings(paper) | _effective(paper, dataset)
    skip = UNUSED_BY[method(cfg)]
    return [(key, value, theirs.get(key)) for key, value in ours.items()
            if key not in NOT_COMPARED_KEYS and key not in skip and not key.startswith(NOT_COMPARED_PREFIXES)
            and value != theirs.get(key)]


def format_deviations(found: list[tuple[str, Any, Any]]) -> str:
    def show(value):
        return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return ", ".join(f"{key}={show(ours)} (paper: {show(paper)})" for key, ours, paper in found)
