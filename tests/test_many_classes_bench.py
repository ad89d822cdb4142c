"""benchmarks/many_classes.py --quick runs end to end: every variant on the same batches, its rows and the table."""
import json

import pytest

from benchmarks import many_classes

pytestmark = pytest.mark.slow


def test_quick_study_writes_a_row_per_variant_and_epoch_and_the_ratio_table(tmp_path, capsys):
    assert many_classes.main(["--quick", "--variants", "bp,readout", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "quick.jsonl")]
    assert [(r["variant"], r["epoch"]) for r in rows] == [("bp", 1), ("readout", 1)]
    al = rows[1]
    assert al["overrides"] == ["model.exit_readout=targets"] and al["warmup_steps"] == 200
    assert len(al["exits"]) == 3 and len(al["separability"]) == 3 and 0 <= al["val_acc"] <= 1
    table = capsys.readouterr().out.splitlines()
    bp_line = next(line for line in table if line.startswith("| bp |"))
    assert f"{rows[0]['test_acc']:.4f} (1.00)" in bp_line  # BP against itself
    ratio = al["test_acc"] / rows[0]["test_acc"]
    assert f"({ratio:.2f})" in next(line for line in table if line.startswith("| readout |"))


def test_an_unknown_variant_is_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown variant.*nope"):
        many_classes.main(["--quick", "--variants", "bp,nope", "--out", str(tmp_path)])


def test_ratios_across_seeds_are_averaged_per_variant_and_epoch(tmp_path, capsys):
    runs = []
    for seed, (bp, al) in enumerate([(0.10, 0.08), (0.20, 0.20)]):
        path = tmp_path / f"seed{seed}.jsonl"
        path.write_text("".join(json.dumps({"variant": v, "epoch": 1, "val_acc": acc, "test_acc": acc}) + "\n"
                                for v, acc in (("bp", bp), ("al", al))))
        runs.append(str(path))
    assert many_classes.main(["--across", *runs]) == 0
    assert "| al | 0.1400 / 0.90 (0.80..1.00) n=2 |" in capsys.readouterr().out
