"""`ray-al report` on tiny real runs (AL in one process and its BP twin on the digits): every
section, the paper's figures beside ours, valid PNGs; bad input is a one-line error."""
import struct

import pytest

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


def _finished_run(folder, config: str, accuracies: list[float]):
    """A finished run's folder as train() leaves it, without a checkpoint (distances are skipped)."""
    folder.mkdir()
    (folder / "config.yaml").write_text(config)
    (folder / "metrics.jsonl").write_text("".join(
        f'{{"epoch": {e}, "epochs": 200, "b1_loss": 0.1, "exit_1": 0.9, "test_acc": {acc}}}\n'
        for e, acc in enumerate(accuracies, start=1)))
    return str(folder)


def test_report_puts_the_paper_figure_beside_ours_and_names_every_deviation(tmp_path):
    """MNIST CNN in the paper's layout (methods as rows, models as columns), the last and the best epoch;
    the BP run on fewer samples and the AL run with target warm-up are marked with what they change,
    the AL run that spells out the paper's own d=256 is not."""
    mnist = "data: {source: parquet, path: somewhere/mnist%s}\n"
    paper = "optim: {schedule: paper}\ntrain: {trainer: %s, epochs: 200}\n"
    runs = [_finished_run(tmp_path / "mnist-cnn-bp", mnist % ", limit_train: 640" + "model: {name: cnn}\n"
                          + paper % "bp", [0.9]),
            _finished_run(tmp_path / "mnist-cnn-al", mnist % "" + "model: {name: cnn, d: 256}\n" + paper % "al",
                          [0.96, 0.95]),
            _finished_run(tmp_path / "warm", mnist % "" + "model: {name: cnn, target_warmup_steps: 300}\n"
                          + paper % "al", [0.97])]
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    table = text[text.index("### MNIST (paper Table 1)"):text.index("## Early exits")]
    for row in ("| method | MLP | CNN |",
                "| BP, paper | 98.6 | 99.4 |",
                "| BP, ours: final | - | 90.0* (1/200) |",
                "| BP, ours: best | - | = final |",
                "| AL, paper | 98.7 | 99.5 |",
                "| AL, ours: final | - | 95.0 (2/200); 97.0* (1/200) |",
                "| AL, ours: best | - | 96.0 (epoch 1); = final |",
                "- BP CNN `mnist-cnn-bp`: data.limit_train=640 (paper: none)",
                "- AL CNN `warm`: model.target_warmup_steps=300 (paper: 0)"):
        assert row in table, row
    assert "mnist-cnn-al`" not in table  # d=256 is the paper's own
    assert "skipped mnist-cnn-al" in text


@pytest.mark.parametrize("override,named", [
    ("model.target_warmup_steps=1000", "model.target_warmup_steps=1000 (paper: 0)"),
    ("model.bridge_grad_to_g=true", "model.bridge_grad_to_g=True (paper: False)"),
    ("model.first_decoder_ce=true", "model.first_decoder_ce=True (paper: False)"),
    ("optim.l2_scope=all", "optim.l2_scope=all (paper: f_kernels)"),
    ("data.augment=crop_flip", "data.augment=crop_flip (paper: jitter)"),
    ("optim.schedule=constant", "optim.schedule=constant (paper: paper)"),
    ("optim.lr=1e-4", "optim.lr=0.0001 (paper: 0.001)"),
    ("model.d=300", "model.d=300 (paper: 500)"),
    ("train.precision=bf16", "train.precision=bf16 (paper: fp32)"),
])
def test_every_setting_that_changes_the_arithmetic_is_named(override, named):
    from ray_al.analysis.paper import deviations, format_deviations
    from ray_al.config import load_config
    cfg = load_config("paper/cifar100_resnet20_al", [override])
    assert format_deviations(deviations(cfg)) == named
    same = ["model.d=500", "model.act=elu", "model.depth=4", "train.trainer=al_local", "train.chunk_size=4",
            "data.path=elsewhere/cifar100", "ray.num_cpus=2", "checkpoint.enabled=false", "train.seed=3"]
    assert deviations(load_config("paper/cifar100_resnet20_al", same)) == []
    assert deviations(load_config("paper/cifar100_resnet20_bp", ["model.bp_baseline=authors"])) == \
        [("model.bp_baseline", "authors", "twin")]


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
    assert "Paper Table 4 (200 epochs) beside ours, at the layer inferred above:" in text
    assert "does not say at which layer; we infer the output layer from the magnitudes" in text
    assert "40 test samples" in text  # the whole test split when it holds fewer than --samples (here 40)
    al_row = next(line for line in text.splitlines() if line.startswith("| AL c10-al_local* | out_sigmoid | 0.73 |"))
    inter, intra = (float(v) for v in al_row.split("|")[4:7:2])
    assert 0 < inter < 3.2 and 0 < intra < 3.2  # sigmoid-bounded points in [0, 1]^10
    assert "| BP c10-bp*† | out | 39.36 |" in text  # *: d=16, 1 epoch, no jitter, constant lr ...
    assert "- \\* `c10-bp` differs from the paper's config in: " in text and "model.d=16 (paper: 3000)" in text
    assert "| BP, paper | 61.6 | 85.4 | 90.6 | 91.9 | 93.1 |" in text and "† the authors' BP network" in text
    assert "| out_sigmoid |" in text  # AL's extra layer in the full distance table
    width, _ = struct.unpack(">II", (out / "tsne-c10-bp.png").read_bytes()[16:24])
    assert width == 4 * 4 * 80  # raw data + the MLP's three paper layers, 4-inch panels at 80 dpi
