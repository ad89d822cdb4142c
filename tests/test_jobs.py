"""`ray job submit --working-dir . -- python -m ray_al train ...` against a real head node
(`ray start --head` on loopback, its own ports and temp dir), and `ray job stop` mid-run."""
import json
import time

import pytest

from tests.headnode import HeadNode, logs, status, submit, wait_for

pytestmark = pytest.mark.slow
TINY = ["data.source=synthetic", "data.synthetic_size=256", "data.batch_size=32", "model.d=32",
        "train.chunk_size=2", "ray.num_cpus_per_block=0.5"]


@pytest.fixture(scope="module")
def head():
    node = HeadNode(num_cpus=2)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()
    assert not node.leftover_pids()


def alive_actors(head) -> list[dict]:
    out = head.ray("list", "actors", "--address", head.address, "--format", "json", "--limit", "1000",
                   "--filter", "state=ALIVE", check=False)
    if out.returncode != 0:
        return [{"error": out.stderr[-500:]}]
    return [] if out.stdout.startswith("No resource") else json.loads(out.stdout)


def test_job_stop_ends_a_run_cleanly_and_the_head_survives(head, tmp_path):
    submit(head, "al-stop", [*TINY, "train.epochs=100000", f"run_dir={tmp_path}", "name=long"])
    metrics = tmp_path / "long" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
        assert status(head, "al-stop") in ("PENDING", "RUNNING"), logs(head, "al-stop")[-3000:]
        time.sleep(1.0)
    assert metrics.is_file(), logs(head, "al-stop")[-3000:]  # it trained at least one epoch
    head.ray("job", "stop", "al-stop")
    assert wait_for(head, "al-stop", {"STOPPED", "FAILED", "SUCCEEDED"}, 60) == "STOPPED"
    text = logs(head, "al-stop")  # SIGTERM became a clean exit, not a kill, that says how to go on
    assert f"ray-al: interrupted\nresume with: ray-al train --resume {tmp_path / 'long'}" in text
    deadline = time.time() + 30
    while [a for a in alive_actors(head) if a.get("class_name") == "BlockActor"] and time.time() < deadline:
        time.sleep(1.0)
    assert not [a for a in alive_actors(head) if a.get("class_name") == "BlockActor" or "error" in a]
    assert head.ray("job", "list").returncode == 0


def test_submitted_run_succeeds_and_writes_its_metrics(head, tmp_path):
    submit(head, "al-ok", [*TINY, "train.epochs=2", f"run_dir={tmp_path}", "name=tiny"])
    assert wait_for(head, "al-ok", {"SUCCEEDED", "FAILED", "STOPPED"}, 180) == "SUCCEEDED", logs(head, "al-ok")
    records = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and 0 <= records[-1]["test_acc"] <= 1
    text = logs(head, "al-ok")
    assert "block 1: node" in text and "block 2: node" in text  # where each block ran, printed at start
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["final"]["epoch"] == 2 and summary["provenance"]["ray_job_submission_id"] == "al-ok"


def test_bad_config_fails_the_job_with_one_line(head, tmp_path):
    submit(head, "al-bad", ["optim.lr=-1", f"run_dir={tmp_path}"])
    assert wait_for(head, "al-bad", {"SUCCEEDED", "FAILED", "STOPPED"}, 120) == "FAILED"
    assert "ray-al: error: optim.lr must be positive" in logs(head, "al-bad")
