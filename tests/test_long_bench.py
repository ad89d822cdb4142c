"""benchmarks/al_vs_bp_long.py --quick: every variant gets segments, the table, CSV and PNG are written
after each, and --resume continues where the checkpoints stand (no segment trained twice)."""
import csv
import re
import subprocess
import sys

from tests.helpers import REPO


def _run(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "benchmarks.al_vs_bp_long", "--quick", "--out", str(tmp_path / "out"),
                           *extra],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def _epochs(tmp_path):
    rows = list(csv.DictReader(open(tmp_path / "out" / "curves.csv")))
    return {v: [float(r["epoch"]) for r in rows if r["variant"] == v] for v in ("bp", "al_paper", "al_warmup")}


def test_quick_run_then_resume(tmp_path):
    first = _run(tmp_path, "--budget-minutes", "0.12", "--segments-per-epoch", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert re.search(r"target warm-up: (stopped at \d+ of|ran all) 300 steps", first.stdout)
    before = _epochs(tmp_path)
    assert all(before[v] for v in before), before  # every variant trained at least one segment
    table = (tmp_path / "out" / "table.txt").read_text()
    assert all(f"digits_mlp   {v}" in table for v in before)
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    refused = _run(tmp_path, "--budget-minutes", "0.1")  # the state of a run is never overwritten
    assert refused.returncode == 2 and "pass --resume" in refused.stderr

    again = _run(tmp_path, "--budget-minutes", "0.12", "--segments-per-epoch", "2", "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed at epoch" in again.stdout and "target warm-up" not in again.stdout
    after = _epochs(tmp_path)
    for v, epochs in after.items():
        assert epochs[:len(before[v])] == before[v]           # the first run's curve, kept
        assert epochs == sorted(set(epochs))                  # then new segments only, in order
    assert sum(map(len, after.values())) > sum(map(len, before.values()))
