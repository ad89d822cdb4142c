"""`ray-al runs`: runs side by side with the settings they differ in; `ray-al eval` prints a table, and
JSON with --json (no Ray: al_local runs)."""
import json

import pytest

from ray_al.cli import main
from ray_al.run.loop import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("slow", 1e-4), ("fast", 1e-3)):
        train(tiny_config(root, name=name, optim={"lr": lr}, train={"trainer": "al_local", "epochs": 2},
                          checkpoint={"enabled": True}), log=lambda line: None)
    return root


def test_runs_lists_every_run_with_what_differs(two_runs, capsys):
    assert main(["runs", str(two_runs)]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["run", "model", "trainer", "epochs", "done"] and header.split()[-1] == "optim.lr"
    assert sorted(r.split()[0] for r in rows) == ["fast", "slow"]
    assert all("2/2" in r and r.split()[-1] in ("0.0001", "0.001") for r in rows)
    assert main(["runs", str(two_runs), "--json"]) == 0
    listed = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["fast"]["optim.lr"] == 1e-3 and listed["fast"]["done"] is True
    assert 0 <= listed["fast"]["last_test_acc"] <= 1 and listed["fast"]["best_test_acc_epoch"] in (1, 2)


def test_runs_of_an_empty_folder_is_one_line(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"ray-al: error: no run folders in {tmp_path}"


def test_eval_prints_a_table_or_json(two_runs, capsys):
    assert main(["eval", str(two_runs / "fast")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].endswith("test accuracy by exit (the last is the paper's prediction)")
    assert out[1].startswith("exit 1: ") and "exit 2: " in out[1]
    assert main(["eval", str(two_runs / "fast"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exit_2"] == result["test_acc"] and result["step"] > 0
