"""YAML configs, dotted overrides, `base:` files, validation errors that name the key; every shipped
config loads and builds its model (on the meta device), and the paper configs carry the paper's
settings, one AL and one BP file per table cell."""
import json
from pathlib import Path

import pytest

from ray_al.analysis.paper import DATASETS, RESULTS, dataset_key, paper_result
from ray_al.config import Config, config_from_dict, load_config, set_dotted
from ray_al.errors import ConfigError
from ray_al.models import parameter_counts
from tests.helpers import CONFIGS, REPO

FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps")  # sweeps: tests/test_tune.py


def test_overrides_are_typed_and_dotted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: cnn}\noptim: {lr: 1e-4}\n")
    cfg = load_config(path, ["train.epochs=3", "optim.lr=0.01", "model.d=64", "ray.address=null"])
    assert (cfg.model.name, cfg.train.epochs, cfg.optim.lr, cfg.model.d, cfg.ray.address) == ("cnn", 3, 0.01, 64, None)
    assert isinstance(load_config(path).optim.lr, float)  # YAML reads 1e-4 as a string


def test_no_file_means_the_embedded_default_which_configs_default_spells_out():
    assert load_config(None) == load_config(CONFIGS / "default.yaml")
    assert load_config(None).data.source == "digits"


@pytest.mark.parametrize("text,message", [
    ("model: [unclosed", "malformed YAML"),
    ("modle: {name: mlp}", "unknown config key 'modle'"),
    ("train: {epochz: 3}", "unknown config key 'train.epochz'"),
    ("train: {epochs: three}", "train.epochs: expected int"),
    ("optim: {lr: -0.1}", "optim.lr must be positive"),
    ("train: {chunk_size: 0}", "train.chunk_size must be positive"),
    ("train: {trainer: magic}", "train.trainer: 'magic' is not one of"),
    ("data: {source: parquet}", "data.path is required"),
    ("- a list", "expected a mapping"),
])
def test_bad_configs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_bad_override_and_missing_file():
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


def test_every_shipped_config_resolves_to_its_recorded_values():
    """resolved_configs.json holds each config's values that differ from the defaults, recorded before
    the BP twins and quick variants were rewritten as a few lines over `base:`; the rewrite changed none."""
    table = json.loads((REPO / "tests" / "resolved_configs.json").read_text())
    assert sorted(table) == sorted(str(p.relative_to(CONFIGS)) for p in FILES)
    for name, values in table.items():
        expected: dict = {}
        for key, value in values.items():
            set_dotted(expected, key, value)
        assert load_config(CONFIGS / name) == config_from_dict(expected), name


def test_base_is_relative_to_the_file_and_cycles_are_one_line(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "cell.yaml").write_text("model: {name: cnn, d: 64}\ntrain: {epochs: 5}\n")
    (tmp_path / "sub" / "twin.yaml").write_text("base: ../cell.yaml\nmodel: {d: 32}\ntrain: {trainer: bp}\n")
    cfg = load_config(tmp_path / "sub" / "twin.yaml", ["train.epochs=2"])
    assert (cfg.model.name, cfg.model.d, cfg.train.epochs, cfg.train.trainer) == ("cnn", 32, 2, "bp")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="config files name each other as base: a.yaml -> b.yaml -> a.yaml") as err:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "lost.yaml")


def test_round_trip_through_yaml(tmp_path):
    from ray_al.config import save_config
    cfg = load_config(None, ["model.depth=3", "data.synthetic_shape=[3,4,4]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg and isinstance(cfg, Config)


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
        shape, classes = {"digits": ((1, 8, 8), 10), "synthetic": ((1, 8, 8), 10)}.get(cfg.data.source, (None, None))
        if shape is None:
            name = (cfg.data.name or Path(cfg.data.path or "").name).lower()
            shape = (1, 28, 28) if "mnist" in name else (3, 32, 32)
            classes = 100 if "100" in name else 10
        assert parameter_counts(cfg.model, shape, classes)["al_effective"] > 0
        return
    ds = dataset_key(cfg)
    assert ds in DATASETS
    shape, classes = DATASETS[ds]
    counts = parameter_counts(cfg.model, shape, classes)
    assert counts["bp"] == counts["al_effective"] > 0
    assert paper_result(cfg) == RESULTS[(ds, cfg.model.name)][path.stem.rsplit("_", 1)[1]]
    assert (cfg.train.trainer == "bp") == path.stem.endswith("_bp")
    assert cfg.data.batch_size == 32
    # the paper's lr: 1e-3 for every ResNet. The authors' code (ecd05d8 on) gives 1e-3 to BP ResNets only
    # and 1e-4 to AL ones: configs/README.md states it, with the override; this locks the paper's value
    # except the quick CIFAR-100 MLP, tuned on validation (benchmarks/RESULTS-many-classes.md, configs/README.md)
    tuned = path.parent.name == "quick" and path.stem.startswith("cifar100_mlp")
    assert (cfg.optim.lr, cfg.optim.target_lr_scale) == (
        (2e-4, 1.0) if tuned else (1e-3 if cfg.model.name.startswith("resnet") else 1e-4, 2.0))
    assert cfg.optim.l2_scope == "f_kernels"
    wd = {"vgg": 1e-5 if cfg.train.trainer != "bp" else 5e-4, "resnet20": 1e-4, "resnet32": 1e-4}
    assert cfg.optim.weight_decay == wd.get(cfg.model.name, 0.0)
    assert cfg.data.augment == ("none" if ds == "mnist" else "jitter")
    if path.parent.name == "paper":
        assert cfg.train.epochs == 200 and cfg.optim.schedule == "paper"
        assert cfg.data.limit_train is None and cfg.model.d is None
        assert cfg.model.target_warmup_steps == 0  # the paper's algorithm: no target-path warm-up
        assert not (cfg.model.bridge_grad_to_g or cfg.model.first_decoder_ce) and cfg.model.bp_baseline == "twin"
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
