"""Checks before Ray starts (run/preflight.py): each refusal is one line, in seconds, exit 2, and leaves
no run folder; the shipped paper configs pass them wherever their data is present."""
import subprocess
import sys
import time

import pytest

from ray_al.config import load_config
from ray_al.errors import ConfigError, DataError
from ray_al.run.preflight import check_before_ray
from tests.helpers import CONFIGS, REPO, dataset_dir, tiny_config


def test_missing_data_is_refused_before_ray_in_seconds(tmp_path):
    begin = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ray_al", "train", str(CONFIGS / "mnist_mlp.yaml"),
                          f"data.path={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    seconds = time.perf_counter() - begin
    assert out.returncode == 2
    assert out.stderr.strip() == f"ray-al: error: dataset folder not found: {tmp_path / 'nowhere'}"
    assert not (tmp_path / "runs").exists() and "ray" not in out.stdout.lower()
    print(f"\nrefused in {seconds:.1f}s (the interpreter and torch's import included)")


def test_wandb_without_a_key_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = tiny_config(tmp_path, log={"wandb": True})
    with pytest.raises(ConfigError, match=r"log.wandb=true: no W&B API key for api.wandb.ai"):
        check_before_ray(cfg)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_before_ray(cfg)  # offline needs no key


def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, data={"source": "synthetic", "synthetic_shape": [3, 2, 2]}, model={"name": "vgg"})
    with pytest.raises(ConfigError, match=r"input shape \(3, 2, 2\) does not fit the model"):
        check_before_ray(cfg)


def test_an_unwritable_run_dir_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_before_ray(tiny_config(tmp_path, run_dir=str(tmp_path / "a_file" / "runs")))


def test_parquet_folders_are_read_cheaply_and_checked(tmp_path):
    mnist = dataset_dir("mnist")
    cfg = load_config(CONFIGS / "paper" / "mnist_cnn_al.yaml", [f"data.path={mnist}", f"run_dir={tmp_path}"])
    begin = time.perf_counter()
    check_before_ray(cfg)
    assert time.perf_counter() - begin < 10
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train-\\*.parquet files in"):
        check_before_ray(load_config(CONFIGS / "mnist_mlp.yaml", [f"data.path={tmp_path / 'empty'}"]))
