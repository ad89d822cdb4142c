"""Run loggers: TensorBoard event files in every run folder; MLflow and W&B only when chosen."""
import json
import subprocess
import sys

import pytest

from ray_al.cli import main
from ray_al.errors import ConfigError
from ray_al.run.loggers import TensorBoardLogger
from ray_al.run.loop import train
from tests.helpers import REPO, tiny_config


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_event_file_of_a_tiny_run_holds_its_scalars(tmp_path):
    cfg = tiny_config(tmp_path, name="tb", train={"trainer": "al_local", "epochs": 2}, log={"every_steps": 10})
    result = train(cfg, log=lambda line: None)
    found = scalars(result.run_dir)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]  # 44 batches of 32 per epoch, chunks of 4
    assert steps == [44, 88]
    # every epoch record, key by key, at its step: losses, exit accuracies, samples/s
    for key in ("test_acc", "exit_1", "exit_2", "samples_per_s", "b1_bridge_loss", "b2_ae_loss", "train_time_s"):
        assert found[f"epoch/{key}"] == [(s, pytest.approx(r[key], rel=1e-6)) for s, r in zip(steps, records)], key
    # per-block losses and samples/s every 10 steps (at the chunk that crosses each multiple of 10)
    for key in ("b1_bridge_loss", "b1_ae_loss", "b2_bridge_loss", "b2_ae_loss", "samples_per_s"):
        assert [s for s, _ in found[f"step/{key}"]] == [12, 20, 32, 40, 52, 60, 72, 80], key
    assert all(v > 0 for _, v in found["step/samples_per_s"])


def test_every_numeric_key_of_a_record_is_logged(tmp_path):
    """Keys the logger does not know (a target-separability measure, say) reach TensorBoard too."""
    logger = TensorBoardLogger(tmp_path)
    logger.log_epoch({"epoch": 1, "epochs": 1, "step": 7, "test_acc": 0.5, "sep_dist_1": 2.25, "sep_acc_1": 0.75,
                      "name": "not a number", "partial": True})
    logger.close()
    found = scalars(tmp_path)
    assert found == {"epoch/epoch": [(7, 1.0)], "epoch/test_acc": [(7, 0.5)], "epoch/sep_dist_1": [(7, 2.25)],
                     "epoch/sep_acc_1": [(7, 0.75)]}


def test_a_resumed_run_hides_the_events_it_redoes(tmp_path):
    TensorBoardLogger(tmp_path).close()
    first = TensorBoardLogger(tmp_path)
    for step in (10, 20, 30):
        first.log_step(step, {"loss": float(step)})
    first.close()
    again = TensorBoardLogger(tmp_path, from_step=20)  # restored from the checkpoint at step 20
    again.log_step(30, {"loss": 3.0})
    again.close()
    assert scalars(tmp_path)["step/loss"] == [(10, 10.0), (20, 20.0), (30, 3.0)]


def test_no_logger_package_is_imported_unless_chosen(tmp_path):
    code = ("import sys; from tests.helpers import tiny_config; from ray_al.run.loop import train; "
            f"train(tiny_config({str(tmp_path)!r}, train={{'trainer': 'al_local'}}), log=lambda line: None); "
            "print(sorted(m for m in ('mlflow', 'wandb', 'optuna', 'hyperopt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_chosen_logger_without_its_package_is_one_line_and_no_run_folder(tmp_path, monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"log.{package}=true needs the {package} package: "
                                          rf"pip install 'ray_al\[{package}\]'"):
        train(tiny_config(tmp_path, train={"trainer": "al_local"}, log={package: True}))
    assert main(["train", "train.trainer=al_local", f"log.{package}=true", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ray-al: error: log.{package}=true needs the {package} package: pip install 'ray_al[{package}]'"
    assert list(tmp_path.iterdir()) == []


def test_mlflow_receives_the_epoch_records_and_the_config(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = tiny_config(tmp_path, name="ml", train={"trainer": "al_local", "epochs": 2},
                      log={"mlflow": True, "mlflow_uri": uri, "project": "tests"})
    result = train(cfg, log=lambda line: None)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_name == "ml" and run.data.params["model.d"] == "32" and run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch/test_acc")]
    assert history == [(r["step"], pytest.approx(r["test_acc"])) for r in result.history]
    assert client.get_metric_history(run.info.run_id, "step/b2_ae_loss")


def test_wandb_offline_run_holds_the_epoch_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, name="wb", train={"trainer": "al_local"}, log={"wandb": True})
    result = train(cfg, log=lambda line: None)
    # run.finish() only informs W&B's service process, which closes the run file later (under load
    # the file held just its header when read at once); teardown waits for it, as a script's exit does
    import wandb
    wandb.teardown()
    # the offline run file holds each logged item as key and JSON value (protobuf strings)
    (run_file,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    for key in ("test_acc", "exit_1", "b2_ae_loss"):
        assert f"epoch/{key}".encode() in data and json.dumps(result.final[key]).encode() in data, key
