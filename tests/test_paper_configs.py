"""Every config in configs/ loads, names a known dataset shape and builds its model (on the meta
device); the paper configs carry the paper's settings, one AL and one BP file per table cell."""
from pathlib import Path

import pytest

from ray_al.config import load_config
from ray_al.models import parameter_counts
from ray_al.paper import DATASETS, RESULTS, dataset_key, paper_result

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps")  # sweeps: tests/test_tune.py


def test_there_is_an_al_and_a_bp_config_per_paper_cell():
    for kind in ("paper", "quick"):
        names = {p.stem for p in (CONFIGS / kind).glob("*.yaml")}
        assert names == {f"{ds}_{m}_{t}" for ds, m in RESULTS for t in ("al", "bp")}, kind


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CONFIGS)) for p in FILES])
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    text = path.read_text()
    assert "/work" not in text and "/home" not in text  # relative paths; users override data.path
    if path.parent.name not in ("paper", "quick"):
        return
    ds = dataset_key(cfg)
    assert ds in DATASETS
    shape, classes = DATASETS[ds]
    counts = parameter_counts(cfg.model, shape, classes)
    assert counts["bp"] == counts["al_effective"] > 0
    assert paper_result(cfg) == RESULTS[(ds, cfg.model.name)][path.stem.rsplit("_", 1)[1]]
    assert (cfg.train.trainer == "bp") == path.stem.endswith("_bp")
    assert cfg.data.batch_size == 32
    assert cfg.optim.lr == (1e-3 if cfg.model.name.startswith("resnet") else 1e-4)
    wd = {"vgg": 1e-5 if cfg.train.trainer != "bp" else 5e-4, "resnet20": 1e-4, "resnet32": 1e-4}
    assert cfg.optim.weight_decay == wd.get(cfg.model.name, 0.0)
    assert cfg.data.augment == ("none" if ds == "mnist" else "jitter")
    if path.parent.name == "paper":
        assert cfg.train.epochs == 200 and cfg.optim.schedule == "paper"
        assert cfg.data.limit_train is None and cfg.model.d is None
        assert cfg.train.trainer in ("al", "bp")  # AL through the Ray pipeline
    else:
        assert cfg.data.limit_train and cfg.train.epochs <= 2
        if cfg.model.d is not None:
            assert f"d={cfg.model.d}" in text  # a smaller d is stated in the file


def test_paper_cell_only_for_the_paper_model():
    base = CONFIGS / "paper" / "mnist_mlp_al.yaml"
    assert paper_result(load_config(base, ["model.depth=2"])) == 98.7
    assert paper_result(load_config(base, ["model.depth=8"])) is None
    assert paper_result(load_config(base, ["model.act=sigmoid"])) is None
    assert paper_result(load_config(base, ["data.source=digits"])) is None
    assert paper_result(load_config(CONFIGS / "paper" / "cifar100_cnn_bp.yaml")) == 51.0
    assert paper_result(load_config(CONFIGS / "paper" / "cifar100_cnn_bp.yaml",
                                    ["data.source=parquet", "data.path=/x/CIFAR-100"])) == 51.0
