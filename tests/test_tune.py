"""Ray Tune sweeps: trials reserve their block actors and report test accuracy per epoch."""
import json

import pytest
import ray
import yaml

from ray_al.cli import main
from ray_al.errors import ConfigError
from ray_al.tune import Sweep


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def write_sweep(tmp_path, **extra):
    sweep = {
        "config": {"data": {"source": "synthetic", "synthetic_size": 256, "batch_size": 32},
                   "model": {"name": "mlp", "d": 32}, "train": {"trainer": "al", "epochs": 2, "chunk_size": 2},
                   "ray": {"num_cpus_per_block": 0.25}, "run_dir": str(tmp_path / "runs")},
        "param_space": {"optim.lr": {"grid_search": [1.0e-3, 3.0e-3]}, "train.seed": {"choice": [0, 1]}},
        "tune": {"driver_cpus": 0.5, "verbose": 0, "scheduler": "asha", "grace_period": 1},
        "output": str(tmp_path / "sweep"),
    }
    sweep.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_two_trials_report_each_epoch_and_use_their_reserved_bundles(cluster, tmp_path, capsys):
    assert main(["tune", str(write_sweep(tmp_path))]) == 0
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert sorted(r["optim.lr"] for r in rows) == [1.0e-3, 3.0e-3]
    # ASHA (grace 1, max 2 epochs) may stop the worse trial after epoch 1, never the better one
    assert all(r["status"] == "OK" and 0 <= r["test_acc"] <= 1 for r in rows)
    assert rows[0]["epochs_done"] == 2 and rows[1]["epochs_done"] in (1, 2) and rows[0]["train.seed"] in (0, 1)
    assert (tmp_path / "sweep" / "results.csv").read_text().startswith("trial,optim.lr,")
    out = capsys.readouterr().out
    assert "best_test_acc" in out
    # each trial's run folder: two epoch records; its blocks ran in the trial's placement group
    trials = sorted((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 2
    assert sorted(len((t / "metrics.jsonl").read_text().splitlines()) for t in trials)[-1] == 2
    assert ray.util.placement_group_table() and all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    # 2 trials x (driver 0.5 + 2 blocks x 0.25) fill the 2 CPUs exactly: any extra placement group
    # made by a trial would have waited and failed, so every group seen is a trial's 3-bundle group
    assert {len(pg["bundles"]) for pg in ray.util.placement_group_table().values()} == {3}


def test_search_forms_become_tune_objects(tmp_path):
    from ray import tune
    sweep = Sweep(write_sweep(tmp_path, param_space={"optim.lr": {"loguniform": ["1e-4", 1.0e-2]},
                                                     "train.seed": {"choice": [0, 1]}, "model.d": 16},
                              tune={"scheduler": "asha"}))
    assert isinstance(sweep.param_space["optim.lr"], tune.search.sample.Float)
    assert sweep.param_space["optim.lr"].lower == 1e-4
    assert sweep.param_space["train.seed"].categories == [0, 1] and sweep.param_space["model.d"] == 16


@pytest.mark.parametrize("space, message", [
    ({"optim.lrr": 0.1}, "unknown config key 'optim.lrr'"),
    ({"optim.lr": {"grid_search": [1e-3, -1.0]}}, "optim.lr must be positive"),
    ({"optim.lr": {"loguniform": [0, 1]}}, "0 < low < high"),
    ({"optim.lr": {"normal": [0, 1]}}, "expected a value or one of"),
])
def test_bad_sweeps_fail_in_one_line(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        Sweep(write_sweep(tmp_path, param_space=space))


def test_cli_reports_bad_sweep_as_one_line(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith("ray-al: error: config file not found")


def test_the_shipped_sweep_is_valid(tmp_path):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "mnist_mlp.yaml"
    sweep = Sweep(path, ["data.path=/somewhere/mnist"])
    assert sweep.base_cfg.data.path == "/somewhere/mnist" and sweep.tune["scheduler"] == "asha"
    assert set(sweep.param_space) == {"optim.lr", "model.d", "train.chunk_size", "train.seed"}
