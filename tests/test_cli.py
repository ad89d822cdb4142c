"""The bad-input catalogue: each gets one line naming the problem, a non-zero exit, and
leaves earlier checkpoints as they were."""
import argparse
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from ray_al.cli import main
from ray_al.errors import ConfigError
from tests.helpers import REPO, write_parquet

FAST = ["train.epochs=1", "train.log_every_s=0"]


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small finished local run with checkpoints, shared by the checkpoint cases."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "train.trainer=al_local", "model.d=16", f"run_dir={root}", "name=done", *FAST]) == 0
    return root / "done"


@pytest.fixture(scope="module")
def data_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    img = lambda n, s: rng.integers(0, 256, (n, s, s), dtype=np.uint8)  # noqa: E731
    write_parquet(root / "shapes", "train", img(40, 8), rng.integers(0, 3, 40))
    write_parquet(root / "shapes", "test", img(10, 6), rng.integers(0, 3, 10))
    write_parquet(root / "labels", "train", img(40, 8), np.r_[rng.integers(0, 3, 39), -1])
    write_parquet(root / "labels", "test", img(10, 8), rng.integers(0, 3, 10))
    (root / "corrupt").mkdir()
    (root / "corrupt" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 truncated")
    (root / "corrupt" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    (root / "a_file").write_text("")
    return root


def _truncate(run) -> str:
    """Damage the newest checkpoint; its step (chosen with --step: unchosen, a run falls back past it)."""
    step = sorted((run / "checkpoints").iterdir())[-1]
    (step / "block-1.pt").write_bytes((step / "block-1.pt").read_bytes()[:100])
    return str(int(step.name.split("-")[1]))


CASES = {
    # name: (argv maker, expected text, needs the finished run)
    "malformed yaml": (lambda t, r, d: ["train", str(t / "c.yaml")], "malformed YAML"),
    "unknown key": (lambda t, r, d: ["train", "train.epochz=2"], "unknown config key 'train.epochz'"),
    "wrong type": (lambda t, r, d: ["train", "data.batch_size=big"], "data.batch_size: expected int"),
    "negative lr": (lambda t, r, d: ["train", "optim.lr=-1"], "optim.lr must be positive"),
    "chunk size 0": (lambda t, r, d: ["train", "train.chunk_size=0"], "train.chunk_size must be positive"),
    "unknown model": (lambda t, r, d: ["train", "model.name=transformer"], "unknown model 'transformer'"),
    "more blocks than the model has": (lambda t, r, d: ["train", "model.name=cnn", "model.depth=9",
                                                       f"run_dir={t}"], "model 'cnn' has 4 blocks"),
    "missing dataset folder": (lambda t, r, d: ["train", "data.source=parquet", f"data.path={t}/none"],
                               "dataset folder not found"),
    "corrupt parquet": (lambda t, r, d: ["train", "data.source=parquet", f"data.path={d}/corrupt",
                                         f"data.cache_dir={t}"], "cannot read Parquet file"),
    "images of different shapes": (lambda t, r, d: ["train", "data.source=parquet", f"data.path={d}/shapes",
                                                    f"data.cache_dir={t}"], "test images are"),
    "images of the wrong shape for the model": (lambda t, r, d: ["train", "model.name=cnn", "data.source=synthetic",
                                                                 "data.synthetic_shape=[8,8]", f"run_dir={t}"],
                                                "images must be (C, H, W), got shape (8, 8)"),
    "labels out of range": (lambda t, r, d: ["train", "data.source=parquet", f"data.path={d}/labels",
                                             f"data.cache_dir={t}"],
                            "train-00000-of-00001.parquet row 39: label -1 is negative"),
    "truncated checkpoint": (lambda t, r, d: ["train", "--resume", str(r), "--step", _truncate(r)],
                             "damaged or truncated"),
    "checkpoint of another model": (lambda t, r, d: ["train", "--resume", str(r), "--allow-change", "model.d=99"],
                                    "checkpoint was made for model.d="),
    "not a run folder": (lambda t, r, d: ["eval", str(t)], "is not a run folder"),
    "unwritable run folder": (lambda t, r, d: ["train", f"run_dir={d}/a_file/runs"], "is not writable"),
    "config file not found": (lambda t, r, d: ["train", str(t / "missing.yaml")], "config file not found"),
    "bad override": (lambda t, r, d: ["train", "configs/default.yaml", "train.epochs"], "not of the form"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_nonzero(case, tmp_path, finished_run, data_folders, capsys):
    (tmp_path / "c.yaml").write_text("train: {epochs: [1,\n")
    before = _digest(finished_run)
    make_argv, expected = CASES[case]
    argv = make_argv(tmp_path, finished_run, data_folders)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("ray-al: error: ") and "\n" not in err, err
    assert expected in err, err
    if case != "truncated checkpoint":  # that case damages the file itself; nothing else may change
        assert _digest(finished_run) == before


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ray_al", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_unreachable_ray_address_fails_fast_in_a_real_process():
    proc = _cli("train", "ray.address=127.0.0.1:1", "train.epochs=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ray-al: error: cannot reach the Ray cluster at 127.0.0.1:1")


def test_gpu_requested_where_there_is_none(tmp_path):
    proc = _cli("train", "ray.num_gpus_per_block=0.5", "ray.num_cpus=2", f"run_dir={tmp_path}", *FAST)
    assert proc.returncode == 2
    assert "ray.num_gpus_per_block=0.5 but the Ray cluster has no GPU" in proc.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # a failed start makes no run folder


@pytest.mark.parametrize("argv, expected", [
    (["model.name=transformer"], "unknown model 'transformer'"),
    (["train.device=cuda"], "train.device=cuda but no CUDA device is available"),
    (["log.wandb=true", "model.d=8"], None),  # only where wandb is missing
])
def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, monkeypatch, argv, expected):
    import importlib.util

    import torch
    if "train.device=cuda" in argv:  # on a CUDA machine too: the run is started as where there is none
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if "log.wandb=true" in argv and importlib.util.find_spec("wandb"):
        argv = ["log.wandb=true", "model.name=nonesuch"]  # wandb present: fail on the model instead
        expected = "unknown model 'nonesuch'"
        monkeypatch.setenv("WANDB_MODE", "offline")  # (online without a key is refused first: test_preflight)
    assert main(["train", "train.trainer=al_local", f"run_dir={tmp_path}", *FAST, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected is None or expected in err, err
    assert list(tmp_path.iterdir()) == []


def test_version_names_the_package_commit_torch_and_ray(capsys):
    import ray
    import torch

    from ray_al import __version__
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"ray-al {__version__}") and f"torch {torch.__version__.split('+')[0]}" in line
    assert f"ray {ray.__version__}" in line and ("git " in line) == (REPO / ".git").exists()


def test_config_prints_every_key_with_type_default_value_and_description(capsys):
    from ray_al.config import describe_keys, load_config
    assert main(["config", "paper/mnist_mlp_bp", "train.epochs=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("  # ")[0].split() == ["key", "type", "default", "value"]
    described = {line.split()[0]: line.split("  # ", 1)[1] for line in lines[1:]}
    assert all(described.values())  # every key says what it does
    assert described["train.trainer"].startswith("how the model trains; one of: al (the Ray pipeline")
    rows = {line.split()[0]: line.split("  # ")[0] for line in lines[1:]}
    assert set(rows) == {key for key, *_ in describe_keys(load_config())}
    assert rows["train.epochs"].split() == ["train.epochs", "int", "1", "3", "*"]
    assert rows["train.trainer"].split() == ["train.trainer", "str", "al", "bp", "*"]
    assert rows["ray.num_cpus_per_block"].split() == ["ray.num_cpus_per_block", "float", "|", "None", "null", "null"]
    assert rows["log.tensorboard"].split() == ["log.tensorboard", "bool", "true", "true"]


def test_shipped_configs_are_found_from_any_directory(tmp_path, monkeypatch):
    from ray_al.config import find_config, load_config
    monkeypatch.chdir(tmp_path)
    shipped = REPO / "configs" / "paper" / "mnist_mlp_al.yaml"
    for name in ("paper/mnist_mlp_al", "paper/mnist_mlp_al.yaml", "configs/paper/mnist_mlp_al.yaml"):
        assert find_config(name).resolve() == shipped.resolve(), name
    assert load_config("paper/mnist_mlp_bp").train.trainer == "bp"  # its base: resolves beside it
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "mnist_mlp_al.yaml").write_text("train: {epochs: 7}\n")
    assert load_config("paper/mnist_mlp_al.yaml").train.epochs == 7  # a file here comes first
    with pytest.raises(ConfigError, match="config file not found: paper/nothing"):
        find_config("paper/nothing")


def test_every_subcommand_has_an_example_and_every_argument_a_help_text():
    from ray_al.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.epilog and parser.epilog.startswith(f"example: ray-al {name}"), name
        assert not [a.dest for a in parser._actions if not a.help], name


def test_the_config_keys_page_is_what_the_code_describes(capsys):
    assert main(["config", "--markdown"]) == 0
    assert (REPO / "docs" / "config-keys.md").read_text() == capsys.readouterr().out, \
        "docs/config-keys.md is stale: ray-al config --markdown > docs/config-keys.md"
