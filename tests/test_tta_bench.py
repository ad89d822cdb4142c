"""benchmarks/time_to_accuracy.py --quick runs end to end: every case and variant, the table, CSV and PNG."""
import csv
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_quick_run_prints_the_table_and_writes_csv_and_png(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.time_to_accuracy", "--quick", "--threads", "1",
                          "--out", str(tmp_path / "tta")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout[out.stdout.index("steps and training seconds"):]
    for case in ("digits_mlp", "synth100_mlp"):
        for variant in ("bp", "al_paper", "al_warmup"):
            assert any(line.split()[:2] == [case, variant] for line in table.splitlines()), (case, variant)
    assert re.search(r"target warm-up: (stopped at \d+ of|ran all) 300 steps", out.stdout) and "sep=[" in out.stdout
    rows = list(csv.DictReader(open(tmp_path / "tta.csv")))
    assert {(r["case"], r["variant"]) for r in rows} == {(c, v) for c in ("digits_mlp", "synth100_mlp")
                                                         for v in ("bp", "al_paper", "al_warmup")}
    al = [r for r in rows if r["variant"] == "al_warmup" and r["case"] == "synth100_mlp"]
    assert al and {"exit_1", "exit_3", "sep_acc_3", "seconds", "step"} <= set(al[0])
    assert (tmp_path / "tta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
