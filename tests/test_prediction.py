"""Prediction without Ray: inputs preprocessed exactly as in training, exits that agree with the
composed function, BatchNorm in eval mode, confident early exit that stops rows at their exit, the
trade-off table, and `ray-al predict` / `ray-al eval --thresholds` with their one-line errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ray_al.cli import main
from ray_al.config import DataConfig
from ray_al.core.blocks import predict_all_exits
from ray_al.data.datasets import load_dataset
from ray_al.inference.early_exit import ExitPolicy, LocalRunner, answer, confidence, stages_of, tradeoff
from ray_al.inference.prediction import load, read_inputs
from ray_al.run.loop import train
from tests.helpers import tiny_config, write_parquet, write_user_models

N = 120  # test images written as files


def composed(blocks, x, exit_at=None):
    """The paper's composed function h_1(...h_k(b_k(f_k(...f_1(x))))) for exit k (default: the last)."""
    return predict_all_exits(blocks, x)[(exit_at or len(blocks)) - 1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained 2-block run of a user model with BatchNorm, and the first N raw test images as PNG
    files, an .npy and a Parquet file."""
    root = tmp_path_factory.mktemp("pred")
    write_user_models(root / "code", "pred_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "code"))
        cfg = tiny_config(root, model={"name": "user_bn_mlp", "module": "pred_models", "d": 32}, optim={"lr": 1e-2},
                          train={"trainer": "al_local", "epochs": 3}, checkpoint={"enabled": True}, name="r")
        train(cfg, log=lambda line: None)
        raw = load_dataset(DataConfig(normalize=False)).test_x[:N]
        raw = (raw[:, 0] * 255).round().to(torch.uint8).numpy()  # the digits' uint8 pixels [N, 8, 8]
        (root / "png").mkdir()
        for i, img in enumerate(raw):
            Image.fromarray(img).save(root / "png" / f"{i:03d}.png")
        np.save(root / "x.npy", raw)
        write_parquet(root / "pq", "test", raw, np.zeros(N, dtype=np.int64))
        yield root


def test_every_input_format_is_preprocessed_as_training_was(run):
    loaded = load(run / "r")
    expected = load_dataset(loaded.cfg.data).test_x[:N]
    for inputs in (run / "png", run / "x.npy", run / "pq" / "test-00000-of-00001.parquet",
                   sorted((run / "png").iterdir())):
        names, x = read_inputs(inputs, loaded.preprocess)
        assert len(names) == N and torch.equal(x, expected), inputs


def test_fixed_exits_are_the_composed_function(run):
    loaded = load(run / "r")
    x = load_dataset(loaded.cfg.data).test_x
    for k in (1, 2):
        ans = answer(LocalRunner(stages_of(loaded.blocks)), x, ExitPolicy(exit=k))
        with torch.no_grad():
            assert torch.equal(ans.prediction, composed(loaded.blocks, x, exit_at=k).argmax(dim=1))
        assert set(ans.exit.tolist()) == {k}


def test_batchnorm_predicts_in_eval_mode(run):
    loaded = load(run / "r")
    x = load_dataset(loaded.cfg.data).test_x[:64]
    bn = loaded.blocks[0].f[2]
    stats = bn.running_mean.clone()
    for block in loaded.blocks:
        block.train()
    with torch.no_grad():
        batch, alone = composed(loaded.blocks, x), composed(loaded.blocks, x[:1])
    assert torch.allclose(batch[:1], alone, atol=1e-6)  # running statistics, not the batch's
    assert torch.equal(bn.running_mean, stats) and all(b.training for b in loaded.blocks)  # restored


class CountingRunner(LocalRunner):
    def __init__(self, stages):
        super().__init__(stages)
        self.rows = {}

    def forward(self, k, s):
        self.rows[k] = self.rows.get(k, 0) + len(s)
        return super().forward(k, s)


def test_confident_inputs_never_reach_the_next_block(run):
    loaded = load(run / "r")
    x, y = load_dataset(loaded.cfg.data).test_x, load_dataset(loaded.cfg.data).test_y
    runner = CountingRunner(stages_of(loaded.blocks))
    ans = answer(runner, x, ExitPolicy(None, 0.5))
    at_1 = int((ans.exit == 1).sum())
    assert 0 < at_1 < len(x)  # both exits answer some inputs
    assert runner.rows == {1: len(x), 2: len(x) - at_1}
    with torch.no_grad():
        conf_1 = confidence(composed(loaded.blocks, x, exit_at=1))
    assert bool((conf_1[ans.exit == 1] >= 0.5).all()) and bool((conf_1[ans.exit == 2] < 0.5).all())
    # the trade-off table applies the same rule to every exit's logits at once
    with torch.no_grad():
        exits = [composed(loaded.blocks, x, exit_at=k) for k in (1, 2)]
    row = tradeoff(exits, y, [0.5])[0]
    assert row["exit_1_share"] == pytest.approx(at_1 / len(x))
    assert row["accuracy"] == pytest.approx(float((ans.prediction == y).float().mean()))
    assert row["blocks_per_input"] == pytest.approx(float(ans.exit.float().mean()))


def test_prediction_and_serve_replicas_load_weights_only(run, monkeypatch):
    """`ray-al predict` and every Serve replica build no optimizer, yet answer exactly as the blocks
    of the full training loader (run.factory.load_trainer) do."""
    from ray_al.inference.serve import replica_stage
    from ray_al.run.factory import load_trainer

    made, original = [], torch.optim.Optimizer.__init__

    def counting(self, *args, **kwargs):
        made.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", counting)
    loaded, stage_2 = load(run / "r"), replica_stage(str(run / "r"), 2, [])
    assert made == [] and not any(isinstance(v, torch.optim.Optimizer) for v in vars(loaded).values())
    _, trainer, _ = load_trainer(run / "r")
    assert made  # the full loader builds them, and the counter sees it
    x = load_dataset(loaded.cfg.data).test_x
    ours, full = LocalRunner(stages_of(loaded.blocks)), LocalRunner(stages_of(trainer.blocks))
    for policy in (ExitPolicy(None, 0.5), ExitPolicy(1), ExitPolicy(None, 0.3, "entropy")):
        a, b = answer(ours, x, policy), answer(full, x, policy)
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("prediction", "confidence", "exit")), policy
    with torch.no_grad():
        s_1, _ = full.stage(1, x)
        assert torch.equal(stage_2(s_1)[1], full.stage(2, s_1)[1])


def test_confidence_measures():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(confidence(logits, "maxprob"), torch.tensor([0.25, 1.0]))
    assert torch.allclose(confidence(logits, "entropy"), torch.tensor([0.0, 1.0]), atol=1e-6)


def test_cli_predict_writes_json_and_csv(run, tmp_path, capsys):
    out = tmp_path / "answers.json"
    assert main(["predict", str(run / "r"), str(run / "png"), "--threshold", "0.5", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == N and set(records[0]) == {"input", "prediction", "class", "confidence", "exit"}
    assert {r["exit"] for r in records} == {1, 2}
    assert main(["predict", str(run / "r"), str(run / "x.npy"), "--exit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "input,prediction,class,confidence,exit" and len(lines) == N + 1
    assert all(line.endswith(",2") for line in lines[1:])
    api = load(run / "r").predict(run / "x.npy", exit=2)
    assert [int(line.split(",")[1]) for line in lines[1:]] == [r["prediction"] for r in api]


def test_cli_eval_thresholds_prints_the_tradeoff(run, capsys):
    assert main(["eval", str(run / "r"), "--thresholds", "0.5,0.9,0.99"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == ["threshold", "accuracy", "exit", "1"]
    assert [line.split()[0] for line in out[2:]] == ["0.5", "0.9", "0.99", "last"]
    saved = json.loads((run / "r" / "early_exit.json").read_text())
    assert [r["threshold"] for r in saved["rows"]] == [0.5, 0.9, 0.99, "last exit"]
    assert all(1 <= r["blocks_per_input"] <= 2 for r in saved["rows"])


def _damaged(run_dir, tmp):
    """A copy of the run whose newest block-2.pt has one byte changed."""
    import shutil
    copy = shutil.copytree(run_dir, tmp / "damaged")
    block = sorted(copy.glob("checkpoints/step-*/block-2.pt"))[-1]
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 0xFF
    block.write_bytes(bytes(data))
    return copy


def _bad_png(path):
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(path)
    return path


CASES = {
    "missing input": (lambda r, t: ["predict", str(r / "r"), str(t / "none.png")], "input not found"),
    "exit beyond the model": (lambda r, t: ["predict", str(r / "r"), str(r / "x.npy"), "--exit", "3"],
                              "exit 3: the model has exits 1..2"),
    "exit not a number": (lambda r, t: ["predict", str(r / "r"), str(r / "x.npy"), "--exit", "last"],
                          "--exit must be a block number or auto"),
    "image of the wrong size": (lambda r, t: ["predict", str(r / "r"), str(_bad_png(t / "big.png"))],
                                "image is 16x16, expected 8x8"),
    "not an image": (lambda r, t: ["predict", str(r / "r"), str((t / "a.png").write_text("hi") and t / "a.png")],
                     "not an image"),
    "unknown input kind": (lambda r, t: ["predict", str(r / "r"), str(r / "r" / "config.yaml")],
                           "not an image, folder, .npy or .parquet input"),
    "threshold out of range": (lambda r, t: ["eval", str(r / "r"), "--thresholds", "0.5,1.5"],
                               "threshold must be in [0, 1]"),
    "negative threshold": (lambda r, t: ["eval", str(r / "r"), "--thresholds", "0.5,-0.5"],
                           "threshold must be in [0, 1], got -0.5"),
    "damaged checkpoint": (lambda r, t: ["predict", str(_damaged(r / "r", t)), str(r / "x.npy")],
                           "block-2.pt is damaged or truncated"),
    "checkpoint of another model": (lambda r, t: ["eval", str(r / "r"), "model.d=16", "--thresholds", "0.5"],
                                    "checkpoint was made for model.d=32, this run has 16"),  # the fingerprint
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_prediction_input_is_one_line(case, run, tmp_path, capsys):
    argv, expected = CASES[case]
    assert main(argv(run, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ray-al: error: ") and "\n" not in err and expected in err, err
