"""Ray Tune sweeps: trials sized like `train`, reporting checkpoints; restore, resume, PBT, search algorithms."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from ray import tune

from ray_al.cli import main
from ray_al.errors import ConfigError
from ray_al.run.tune import Sweep, check_fits, trial_resources
from tests.helpers import REPO

# 256 synthetic samples, 20% held out: 6 batches of 32 per epoch
DATA = {"source": "synthetic", "synthetic_size": 256, "batch_size": 32, "val_fraction": 0.2}
# trials that test Tune's side (restore, resume, PBT) train the blocks in the trial's own process:
# one process per trial instead of three (the Ray pipeline in trials is the first test's)
LOCAL = {"trainer": "al_local", "threads": 1}
# MNIST-sized synthetic images: epochs long enough (26 steps) that a signal lands while a trial runs
LONGER = {"data": {"synthetic_size": 1024, "synthetic_shape": [1, 28, 28]}, "model": {"d": 64}}


def write_sweep(tmp_path, config=None, **extra):
    sweep = {
        "config": {"data": dict(DATA), "model": {"name": "mlp", "d": 32},
                   "train": {"trainer": "al", "epochs": 2, "chunk_size": 2, "log_every_s": 0},
                   "ray": {"num_cpus_per_block": 0.25}, "log": {"every_steps": 0}, "run_dir": str(tmp_path / "runs")},
        "param_space": {"optim.lr": {"grid_search": [1.0e-3, 3.0e-3]}, "train.seed": {"choice": [0, 1]}},
        "tune": {"driver_cpus": 0.5, "verbose": 0, "scheduler": "asha", "grace_period": 1},
        "output": str(tmp_path / "sweep"),
    }
    for section, values in (config or {}).items():
        sweep["config"].setdefault(section, {}).update(values)
    sweep.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def trial_frames(output: Path) -> dict[str, list[int]]:
    """Each trial's reported epochs, in order, from Tune's own progress files."""
    import pandas as pd
    return {p.parent.name: list(pd.read_csv(p)["epoch"]) for p in (output / "tune").glob("*/progress.csv")}


def test_two_trials_on_two_cpus_report_their_checkpoints(ray_cluster, tmp_path, capsys):
    from ray_al.run.tune import Sweep, run_sweep
    results = run_sweep(Sweep(write_sweep(tmp_path)))
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert sorted(r["optim.lr"] for r in rows) == [1.0e-3, 3.0e-3]
    # ASHA (grace 1, max 2 epochs) may stop the worse trial after epoch 1, never the better one
    assert all(r["status"] == "TERMINATED" and 0 <= r["val_acc"] <= 1 for r in rows)
    assert rows[0]["epoch"] == 2 and rows[1]["epoch"] in (1, 2) and rows[0]["train.seed"] in (0, 1)
    assert rows[0]["best_val_acc"] >= rows[1]["best_val_acc"]
    assert (tmp_path / "sweep" / "results.csv").read_text().startswith(
        "trial_id,trial,optim.lr,train.seed,epoch,val_acc,test_acc")
    assert sorted(r["trial"] for r in rows) == ["trial-00000", "trial-00001"]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)  # beside the metric, as the sweep file promises
    assert "best_val_acc" in capsys.readouterr().out
    # the best trial's checkpoint is the run's own checkpoint folder of its last epoch: blocks load from it
    best = results.get_best_result()
    manifest = json.loads((Path(best.checkpoint.path) / "manifest.json").read_text())
    assert manifest["step"] == 2 * 6 and manifest["epoch"] == 2 and manifest["provenance"]["ray"] == ray.__version__
    for entry in manifest["blocks"]:
        data = (Path(best.checkpoint.path) / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert "block" in torch.load(io.BytesIO(data), weights_only=True)
    # each trial's run folder: epoch records; its blocks ran in the trial's placement group
    trials = sorted((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 2
    assert sorted(len((t / "metrics.jsonl").read_text().splitlines()) for t in trials)[-1] == 2
    assert ray.util.placement_group_table() and all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    # 2 trials x (driver 0.5 + 2 blocks x 0.25) fill the 2 CPUs exactly: any extra placement group
    # made by a trial would have waited and failed, so every group seen is a trial's 3-bundle group
    assert {len(pg["bundles"]) for pg in ray.util.placement_group_table().values()} == {3}


class KillAtFirstCheckpoint(tune.Callback):
    """SIGKILL a trial's process when Tune takes its first checkpoint. Tune's function trainables report
    synchronously, so the trial is then waiting for Tune to ask for its next epoch: it dies after epoch 1,
    always, and Tune registers epoch 1's checkpoint before it restarts the trial."""

    def __init__(self):
        self.killed: list[tuple[int, int]] = []  # (pid, epoch)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.killed:
            os.kill(trial.last_result["pid"], signal.SIGKILL)  # the trial's own process
            self.killed.append((trial.last_result["pid"], trial.last_result["epoch"]))


def test_a_killed_trial_is_restored_from_its_last_checkpoint(ray_cluster, tmp_path, monkeypatch):
    """SIGKILL the trial's process at its first checkpoint: Tune (max_failures=1) starts it again and
    the run goes on from that checkpoint (epoch 1), not from the start."""
    import ray_al.run.tune as sweeps
    path = write_sweep(tmp_path, config={"train": {"epochs": 3, **LOCAL}},
                       param_space={"optim.lr": 1.0e-3}, tune={"driver_cpus": 0.5, "verbose": 0, "max_failures": 1})
    killer, run_config = KillAtFirstCheckpoint(), sweeps._run_config

    def with_the_killer(sweep):
        config = run_config(sweep)
        config.callbacks = [killer]
        return config

    monkeypatch.setattr(sweeps, "_run_config", with_the_killer)
    assert main(["tune", str(path)]) == 0
    assert [epoch for _, epoch in killer.killed] == [1], killer.killed
    from ray.tune import ExperimentAnalysis
    (trial,) = ExperimentAnalysis(str(tmp_path / "sweep" / "tune")).trials
    last = trial.last_result
    # the restarted trial went on from epoch 1's checkpoint: it trained epochs 2 and 3 only
    assert (last["epoch"], last["iterations_since_restore"]) == (3, 2), last
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert rows[0]["status"] == "TERMINATED" and rows[0]["epoch"] == 3
    assert last["pid"] != killer.killed[0][0]  # two processes: the killed one and its replacement


def test_an_interrupted_sweep_resumes_to_completion(ray_cluster, tmp_path):
    """Ctrl-C (SIGINT) a running `ray-al tune`: one line and how to resume; `--resume` finishes every
    trial, each from the last checkpoint Tune had registered for it (from scratch where it had none)."""
    from ray.tune import ExperimentAnalysis
    path = write_sweep(tmp_path, config={"train": {"epochs": 12, **LOCAL}, **LONGER},
                       tune={"driver_cpus": 1, "verbose": 0})
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ray_al", "tune", str(path), f"ray.address={address}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # a trial's second checkpoint: Tune has registered its first
    while time.time() < deadline and not list((tmp_path / "sweep" / "tune").glob("*/checkpoint_000001")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-2:] == ["ray-al: interrupted",
                                             f"resume with: ray-al tune --resume {tmp_path / 'sweep'}"]
    before = trial_frames(tmp_path / "sweep")
    saved = {Path(t.path).name: json.loads((Path(t.checkpoint.path) / "manifest.json").read_text())["epoch"]
             for t in ExperimentAnalysis(str(tmp_path / "sweep" / "tune")).trials if t.checkpoint}
    assert saved and all(e < 12 for e in saved.values())  # stopped part-way, with checkpoints

    assert main(["tune", "--resume", str(tmp_path / "sweep")]) == 0
    after = {Path(t.path).name: t.last_result for t in ExperimentAnalysis(str(tmp_path / "sweep" / "tune")).trials}
    assert set(before) <= set(after) and len(after) == 2  # a trial may not have reported before the interrupt
    for trial, last in after.items():
        # after --resume a trial trains the epochs after its checkpoint, not from epoch 1 again
        assert last["epoch"] == 12 and last["epoch"] - last["iterations_since_restore"] == saved.get(trial, 0), trial
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"] and [r["epoch"] for r in rows] == [12, 12]
    print("resumed sweep: epochs reported before the interrupt", before, "checkpoints", saved,
          "after --resume", {t: (r["epoch"], r["iterations_since_restore"]) for t, r in after.items()})


def test_a_sweep_that_cannot_fit_the_cluster_is_refused_in_seconds(ray_cluster, tmp_path, capsys):
    path = write_sweep(tmp_path, config={"ray": {"num_cpus_per_block": 2}})
    start = time.perf_counter()
    assert main(["tune", str(path)]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (earlier trials' worker logs may come first)
    assert err == ("ray-al: error: a trial needs 4.5 CPUs (tune.driver_cpus=0.5 + 2 blocks x ray.num_cpus_per_block=2)"
                   " but the Ray cluster has 2: lower ray.num_cpus_per_block or tune.driver_cpus")
    assert not (tmp_path / "sweep" / "tune").exists()


def test_blocks_of_a_trial_are_sized_like_train_sizes_them(ray_cluster):
    """No ray.num_cpus_per_block: the CPUs left after the driver's, shared by the blocks (at most 1 each);
    the shipped sweep fits a 2-CPU machine."""
    from ray_al.models import block_count
    sweep = Sweep(REPO / "configs" / "sweeps" / "mnist_mlp.yaml", ["data.path=/somewhere/mnist"])
    assert sweep.base_cfg.ray.num_cpus_per_block is None and sweep.opts["metric"] == "val_acc"

    def resources(params):
        from ray_al.run.tune import trial_config
        cfg = trial_config(sweep.base, params)
        return trial_resources(cfg, block_count(cfg.model, (1, 28, 28), 10), float(sweep.opts["driver_cpus"]))

    assert resources({}).bundles == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    check_fits(sweep, resources)  # raises if it does not fit


def test_a_trial_with_block_replicas_reserves_a_bundle_per_replica_and_says_so(ray_cluster, tmp_path):
    """ray.replicas_per_block=2: the driver's bundle, then 2 blocks x 2 replicas (the trial's last N x R bundles,
    pipeline/placement.reserve); too big for the cluster, the refusal names N x R actors."""
    from ray_al.models import block_count

    def sweep_and_resources(cpus):
        sweep = Sweep(write_sweep(tmp_path, config={"ray": {"replicas_per_block": 2, "num_cpus_per_block": cpus}}))

        def resources(params):
            from ray_al.run.tune import trial_config
            cfg = trial_config(sweep.base, params)
            return trial_resources(cfg, block_count(cfg.model, (1, 8, 8), 10), float(sweep.opts["driver_cpus"]))
        return sweep, resources

    sweep, resources = sweep_and_resources(0.25)
    assert resources({}).bundles == [{"CPU": 0.5}] + [{"CPU": 0.25}] * 4
    check_fits(sweep, resources)  # 1.5 CPUs of 2
    sweep, resources = sweep_and_resources(1)
    refused = r"^a trial needs 4.5 CPUs \(tune.driver_cpus=0.5 \+ 2 x 2 actors \(blocks x replicas\) x " \
              r"ray.num_cpus_per_block=1\) but the Ray cluster has 2"
    with pytest.raises(ConfigError, match=refused):
        check_fits(sweep, resources)


def test_population_based_training_copies_a_better_trial(ray_cluster, tmp_path):
    """PBT (synchronous, 2 trials, bottom half copies top half every epoch): the worse trial goes on
    from the better one's checkpoint with a perturbed lr, which its run folder's config records."""
    path = write_sweep(tmp_path, config={"train": {"epochs": 2, **LOCAL}},
                       param_space={"optim.lr": {"choice": [1.0e-4, 3.0e-3]}, "train.seed": 0},
                       tune={"driver_cpus": 0.5, "verbose": 0, "num_samples": 2, "scheduler": "pbt",
                             "perturbation_interval": 1, "quantile_fraction": 0.5, "synch": True})
    assert main(["tune", str(path)]) == 0
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"]
    # every trial trained both epochs, and the table says so: synchronous PBT can drop the report of the epoch a
    # trial trains after its last exploit (Tune's last result then stops at epoch 1); the run folder has it
    trials = (tmp_path / "sweep" / "trials").glob("*/metrics.jsonl")
    trained = [json.loads(m.read_text().splitlines()[-1])["epoch"] for m in trials]
    assert trained == [2, 2] and [r["epoch"] for r in rows] == [2, 2]
    # PBT's log of exploits: [target, source, target epoch, source epoch, old config, new config]
    exploits = [json.loads(line) for line in (tmp_path / "sweep" / "tune" / "pbt_global.txt").read_text().splitlines()]
    assert exploits and all(target != source for target, source, *_ in exploits)
    target, _, _, _, _, new = exploits[-1]
    (folder,) = (tmp_path / "sweep" / "trials").glob(f"trial-{int(target.split('_')[0]):05d}")  # tag "<index>_..."
    assert yaml.safe_load((folder / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(new["optim.lr"])
    # the other trial's checkpoint was taken on record, the one way a run loads another run's checkpoint
    assert json.loads((folder / "run.json").read_text())["adopted"]


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_search_algorithms_suggest_from_the_param_space(tmp_path, algorithm):
    from ray_al.run.tune import _searcher
    sweep = Sweep(write_sweep(tmp_path, param_space={"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                                     "train.chunk_size": {"choice": [2, 4]}},
                              tune={"search_alg": algorithm, "seed": 0}))
    searcher = _searcher(sweep)
    assert searcher.set_search_properties("val_acc", "max", sweep.param_space)
    for i in range(3):
        params = searcher.suggest(f"t{i}")
        assert 1e-4 <= params["optim.lr"] <= 1e-2 and params["train.chunk_size"] in (2, 4)


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_a_search_algorithm_without_its_package_is_one_line(tmp_path, monkeypatch, algorithm):
    from ray_al.run.tune import _searcher
    monkeypatch.setitem(sys.modules, algorithm, None)
    sweep = Sweep(write_sweep(tmp_path, param_space={"optim.lr": {"choice": [1e-3, 1e-2]}},
                              tune={"search_alg": algorithm}))
    with pytest.raises(ConfigError, match=rf"^tune.search_alg={algorithm} needs the {algorithm} package: "
                                          rf"pip install 'ray_al\[{algorithm}\]'$"):
        _searcher(sweep)


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


@pytest.mark.parametrize("tune_opts, config, message", [
    ({"scheduler": "bogus"}, {}, "is not one of none, asha, hyperband, pbt"),
    ({"scheduler": "asha", "grace_period": 5}, {}, "exceeds train.epochs=2"),
    ({"sample": 3}, {}, "unknown tune key"),
    ({"search_alg": "optuna"}, {}, r"cannot search a grid_search \(optim.lr\): use choice"),
    ({"search_alg": "bayes"}, {}, "is not one of basic, optuna, hyperopt"),
    ({}, {"data": {"val_fraction": 0.0}}, "tune.metric=val_acc needs a validation split: set data.val_fraction"),
    ({"scheduler": "pbt"}, {"checkpoint": {"enabled": False}}, "restores trials from their checkpoints"),
])
def test_bad_tune_options_fail_in_one_line(tmp_path, tune_opts, config, message):
    with pytest.raises(ConfigError, match=message):
        Sweep(write_sweep(tmp_path, config=config, tune=tune_opts))


def test_pbt_needs_a_key_it_may_change_inside_a_trial(tmp_path):
    with pytest.raises(ConfigError, match="tune.scheduler=pbt needs a param_space key it may change"):
        Sweep(write_sweep(tmp_path, param_space={"model.d": {"choice": [16, 32]}}, tune={"scheduler": "pbt"}))


def test_cli_reports_bad_sweep_as_one_line(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith("ray-al: error: config file not found")
    assert main(["tune", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ray-al: error: {tmp_path} is not a sweep's output folder (no sweep.yaml)"


def test_the_shipped_sweep_is_valid_and_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository
    sweep = Sweep("sweeps/mnist_mlp", ["data.path=/somewhere/mnist"])
    assert sweep.base_cfg.data.path == "/somewhere/mnist" and sweep.opts["scheduler"] == "asha"
    assert set(sweep.param_space) == {"optim.lr", "model.d", "train.chunk_size", "train.seed"}


def test_a_sweep_whose_trials_all_fail_keeps_their_tracebacks_in_its_folder(ray_cluster, tmp_path, capfd):
    path = write_sweep(tmp_path, config={"train": {"epochs": 1, **LOCAL},
                                         "checkpoint": {"uri": "file:///proc/ray_al_nowhere"}},  # every trial fails
                       tune={"driver_cpus": 0.5, "verbose": 1, "max_failures": 0})
    assert main(["tune", str(path)]) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    log = tmp_path / "sweep" / "trial-errors.log"
    last = err.strip().splitlines()[-1]
    assert last.startswith("ray-al: error: 2 of 2 trial(s) failed; first: ray_al.errors.CheckpointError: cannot "
                           "write checkpoint files under /proc/ray_al_nowhere/"), last
    assert last.endswith(f"(tracebacks: {log})"), last
    assert log.read_text().count("Traceback") >= 2


def test_every_key_of_the_sweep_file_is_overridable_on_the_command_line(tmp_path):
    from ray_al.run.tune import Sweep
    sweep = Sweep(write_sweep(tmp_path), ["tune.num_samples=3", "param_space.optim.lr={grid_search: [0.01, 0.02]}",
                                          f"output={tmp_path / 'o'}", "name=small", "train.epochs=1"])
    assert sweep.opts["num_samples"] == 3 and sweep.raw_space["optim.lr"] == {"grid_search": [0.01, 0.02]}
    assert sweep.output == (tmp_path / "o").resolve() and sweep.name == "small" and sweep.base_cfg.train.epochs == 1
