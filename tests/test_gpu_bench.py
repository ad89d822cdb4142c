"""benchmarks/gpu_throughput.py --quick runs end to end on the CPU: the baseline rows, the step-options row,
ideal and peak-memory columns, the per-chunk transfer of every transport, JSON and text. (The whole of
benchmarks/gpu_evidence.sh --cpu-dry-run takes two minutes here: run by hand, see docs/transports.md; its
argument checks are tested.)"""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_quick_run_prints_the_table_and_writes_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_throughput", "--quick",
                          "--out", str(tmp_path / "out"), "--models", "mlp", "--options", "--batches", "16"],
                         capture_output=True, text=True, timeout=280, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_throughput.json").read_text())
    rows = {r["row"]: r for r in report["results"]}
    assert set(rows) == {"bp", "al_local", "ray_os", "ray_rdt", "bp+all", "ray_rdt+all"}  # --options: none alone
    assert rows["ray_rdt+all"]["options"] == {"precision": "bf16", "adam": "foreach"}  # what a CPU MLP supports
    assert all(r["samples_per_s"] > 0 and r["steps"] >= 16 for r in rows.values())
    assert "tensor transport: gloo (asked for)" in rows["ray_rdt"]["placement"]
    assert "tensor transport: object_store (asked for)" in rows["ray_os"]["placement"]
    assert 0 < rows["ray_rdt"]["samples_per_s"] <= rows["ray_rdt"]["ideal_samples_per_s"]
    assert set(report["transfers"]["mlp"]["ms"]) == {"object_store", "gloo"}
    assert all(isinstance(ms, float) and ms > 0 for ms in report["transfers"]["mlp"]["ms"].values())
    table = (tmp_path / "out" / "gpu_throughput.txt").read_text()
    assert "x BP" in table and "/ideal" in table and table in out.stdout.replace("\r", "")


def test_evidence_script_refuses_missing_data_in_one_line(tmp_path):
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_evidence.sh"), "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "out"), "--cpu-dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == f"gpu_evidence: no train-*.parquet in {tmp_path / 'nope'}"
