"""`ray-al report` on tiny real runs (AL in one process and its BP twin on the digits): every
section, the paper's figures beside ours, valid PNGs; bad input is a one-line error."""
import struct

from ray_al.cli import main
from ray_al.run.loop import train
from tests.helpers import tiny_config


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_report_of_an_al_and_a_bp_run(tmp_path, capsys):
    runs = []
    for trainer in ("al_local", "bp"):
        cfg = tiny_config(tmp_path / "runs", name=f"digits-{trainer}", train={"trainer": trainer, "epochs": 2},
                          checkpoint={"enabled": True})
        runs.append(str(train(cfg, log=lambda line: None).run_dir))
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out), "--samples", "200", "--tsne-samples", "90"]) == 0
    text = (out / "report.md").read_text()
    for section in ("## Test accuracy", "## Early exits", "## Early-exit trade-off", "## Class distances", "## t-SNE",
                    "## Training curves"):
        assert section in text, section
    assert "blocks/input" in text and "FLOPs vs last exit" in text  # the AL run's trade-off table
    assert "| digits-al_local | digits | mlp | 2/2 |" in text            # early exits of the AL run, 2 epochs
    assert "| digits-bp | digits | mlp | bp (twin) | 2/2 |" in text      # no paper figure; the twin baseline
    assert "| bridge |" in text and "| s1 |" in text and "skipped" not in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves-digits-al_local.png", "curves-digits-bp.png", "early-exit.png", "tsne-digits-bp.png"]
    for name in pngs:
        _png(out / name)
        assert f"]({name})" in text
    assert "Target separability (class targets decoded back to their class, depth 1..N) after epoch 1: `sep=[" in text
    al_width, bp_width = (struct.unpack(">I", (out / f"curves-digits-{t}.png").read_bytes()[16:20])[0]
                          for t in ("al_local", "bp"))
    assert al_width > bp_width  # the AL curves have a third panel: separability per depth


def test_report_puts_the_paper_figure_beside_ours(tmp_path):
    # finished MNIST CNN runs' folders, as train() leaves them (no checkpoint: distances are skipped)
    runs = []
    for trainer, extra, acc in (("al", "", 0.95), ("bp", ", limit_train: 640", 0.9)):
        run = tmp_path / f"mnist-cnn-{trainer}"
        run.mkdir()
        (run / "config.yaml").write_text(f"data: {{source: parquet, path: somewhere/mnist{extra}}}\n"
                                         f"model: {{name: cnn}}\ntrain: {{trainer: {trainer}, epochs: 200}}\n")
        (run / "metrics.jsonl").write_text(f'{{"epoch": 1, "epochs": 200, "b1_loss": 0.1, "exit_1": 0.9, '
                                           f'"test_acc": {acc}}}\n')
        runs.append(str(run))
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "### MNIST (paper Table 1)" in text
    assert "| CNN | 99.4 | 90.0* | 1/200 | 99.5 | 95.0 | 1/200 |" in text  # *: fewer samples than the paper
    assert "skipped mnist-cnn-al" in text


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ray-al: error: not a run folder") and "\n" not in err


def test_report_data_paths_are_name_equals_path(tmp_path, capsys):
    from ray_al.analysis.report import parse_data_paths
    assert parse_data_paths(["MNIST=/d/mnist", "cifar10=/d/c=10"]) == {"mnist": "/d/mnist", "cifar10": "/d/c=10"}
    assert main(["report", str(tmp_path), "--data", "cifar10"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_report_sets_table4_beside_ours_and_marks_the_bp_baseline(tmp_path):
    """A CIFAR-10-named Parquet folder (random images), an AL and an authors-baseline BP MLP: the paper's
    Table 4 row beside ours at the output layer (BP logits, AL sigmoid(h_1)), the † on the BP row, and the
    raw-data t-SNE panel first (one extra column)."""
    import numpy as np

    from tests.helpers import write_parquet
    rng = np.random.default_rng(0)
    data = tmp_path / "cifar10"
    for split, n in (("train", 64), ("test", 40)):
        write_parquet(data, split, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
    runs = []
    for trainer in ("al_local", "bp"):
        cfg = tiny_config(tmp_path / "runs", name=f"c10-{trainer}", data={"source": "parquet", "path": str(data),
                                                                         "cache_dir": str(tmp_path / "cache")},
                          model={"name": "mlp", "d": 16, "bp_baseline": "authors"},
                          train={"trainer": trainer}, checkpoint={"enabled": True})
        runs.append(str(train(cfg, log=lambda line: None).run_dir))
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out), "--tsne-samples", "30"]) == 0
    text = (out / "report.md").read_text()
    assert "Paper Table 4 (200 epochs) beside ours:" in text
    assert "40 test samples" in text  # --samples defaults to the whole test split (here 40)
    al_row = next(line for line in text.splitlines() if line.startswith("| AL c10-al_local | out_sigmoid | 0.73 |"))
    inter, intra = (float(v) for v in al_row.split("|")[4:7:2])
    assert 0 < inter < 3.2 and 0 < intra < 3.2  # sigmoid-bounded points in [0, 1]^10
    assert "| BP c10-bp† | out | 39.36 |" in text
    assert "| MLP | 61.6 | " in text and "† the authors' BP network" in text
    assert "| out_sigmoid |" in text  # AL's extra layer in the full distance table
    width, _ = struct.unpack(">II", (out / "tsne-c10-bp.png").read_bytes()[16:24])
    assert width == 4 * 4 * 80  # raw data + the MLP's three paper layers, 4-inch panels at 80 dpi
