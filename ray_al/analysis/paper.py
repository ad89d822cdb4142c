"""The paper's published figures (Kao & Chen 2021, Tables 1-4, 200 epochs) and how a run's
config maps onto a cell of those tables. These numbers are the paper's, never ours."""
from __future__ import annotations

from pathlib import Path

from ray_al.config import Config

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
# Table 4: (dataset, model) -> {"bp"|"al": (inter-class distance, intra-class distance, inter / intra)}, at the
# output layer: BP's logits, AL's output h_1 with its sigmoid (the authors' AL inference ends in that sigmoid;
# the AL values below 1.2 are those of points in [0, 1]^C).
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
