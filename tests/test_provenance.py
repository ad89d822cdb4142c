"""What made a run: package version, git commit, torch and Ray versions in summary.json and every manifest."""
import importlib.metadata
import json
import subprocess

from ray_al import __version__
from ray_al.checkpoint.provenance import provenance
from ray_al.run.loop import train
from tests.helpers import REPO, tiny_config


def test_summary_and_every_checkpoint_manifest_record_the_versions_and_commit(tmp_path):
    cfg = tiny_config(tmp_path, train={"trainer": "al_local", "epochs": 2}, checkpoint={"enabled": True})
    result = train(cfg, log=lambda line: None)
    recorded = json.loads((result.run_dir / "summary.json").read_text())["provenance"]
    assert recorded == provenance()
    assert recorded["ray_al"] == __version__
    assert recorded["torch"] == importlib.metadata.version("torch")
    assert recorded["ray"] == importlib.metadata.version("ray")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert recorded["git_commit"].split("+")[0] == head
    manifests = sorted(result.run_dir.glob("checkpoints/*/manifest.json"))
    assert len(manifests) == 2  # checkpoint.keep
    assert all(json.loads(m.read_text())["provenance"] == recorded for m in manifests)


def test_no_commit_outside_a_checkout(tmp_path):
    from ray_al.checkpoint.provenance import git_commit
    assert git_commit(tmp_path) is None


def test_a_submitted_job_records_its_submission_id(monkeypatch):
    from ray_al.checkpoint import provenance as prov

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_abc"}}')
    prov.provenance.cache_clear()
    try:
        assert prov.provenance()["ray_job_submission_id"] == "raysubmit_abc"
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
        prov.provenance.cache_clear()
        assert "ray_job_submission_id" not in prov.provenance()
    finally:
        prov.provenance.cache_clear()
