"""benchmarks/gpu_throughput.py --quick runs end to end (GPU rows fall back to CPU stand-ins here)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, write_parquet

pytestmark = pytest.mark.slow


def test_quick_run_prints_the_table_and_writes_json(tmp_path):
    rng = np.random.default_rng(0)  # an MNIST-shaped Parquet folder: 28x28 grey PNGs, 10 classes
    write_parquet(tmp_path / "mnist", "train", rng.integers(0, 256, (640, 28, 28), dtype=np.uint8),
                  np.arange(640) % 10)
    write_parquet(tmp_path / "mnist", "test", rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
                  np.arange(100) % 10)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--quick",
                          "--data", str(tmp_path / "mnist"), "--out", str(tmp_path / "out"), "--models", "mlp"],
                         capture_output=True, text=True, timeout=280, cwd=tmp_path,
                         env={**__import__("os").environ, "RAY_AL_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_throughput.json").read_text())
    rows = {r["row"]: r for r in report["results"]}
    assert set(rows) == {"ray_gpu", "ray_cpu", "local_gpu", "bp_gpu"}
    assert all(r["samples_per_s"] > 0 and r["samples"] == 320 for r in rows.values())
    assert any(line.startswith("block 2: node") for line in rows["ray_gpu"]["placement"])
    table = (tmp_path / "out" / "gpu_throughput.txt").read_text()
    assert "vs ray_cpu" in table and table in out.stdout.replace("\r", "")


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--data",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "no train-*.parquet" in out.stderr
