"""`ray-al export`: the prediction path and every exit as torch.export programs that load and
answer in a process where neither Ray nor ray_al can be imported."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ray_al.cli import main
from ray_al.core.blocks import predict_all_exits
from ray_al.data.datasets import load_dataset
from ray_al.inference.early_exit import ExitPolicy, LocalRunner, answer, stages_of
from ray_al.inference.prediction import load
from ray_al.run.loop import train
from tests.helpers import tiny_config

WITHOUT_RAY = """
import sys, json
sys.modules["ray"] = None; sys.modules["ray_al"] = None    # importing either now fails
import numpy as np, torch, al_exits
model = al_exits.load(".")
x = model.preprocess(np.load(sys.argv[1]))
pred, conf, exit = model.answer(x, threshold=0.5)
torch.save({"exits": model.exits(x), "pred": pred, "conf": conf, "exit": exit}, "out.pt")
"""


@pytest.fixture(scope="module", params=["decoders", "targets"])  # model.exit_readout: the read-out is a buffer
def run(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("export")
    cfg = tiny_config(root, model={"name": "cnn", "d": 16, "exit_readout": request.param}, optim={"lr": 3e-3}, name="r",
                      train={"trainer": "al_local", "epochs": 1}, checkpoint={"enabled": True})
    train(cfg, log=lambda line: None)
    return root / "r"


def test_exported_stages_answer_without_ray(run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "stage-1.pt2 .. stage-4.pt2 (torch.export)" in capsys.readouterr().out
    stages = [f"stage-{k}.pt2" for k in range(1, 5)]
    assert sorted(p.name for p in out.iterdir()) == ["al_exits.py", "meta.json", *stages]
    assert json.loads((out / "meta.json").read_text())["n_blocks"] == 4
    raw = (load_dataset(load(run).cfg.data.__class__(normalize=False)).test_x[:50, 0] * 255).round()
    np.save(tmp_path / "x.npy", raw.to(torch.uint8).numpy())
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(tmp_path / "x.npy")], cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(out / "out.pt")

    loaded = load(run)
    x = load_dataset(loaded.cfg.data).test_x[:50]
    with torch.no_grad():
        expected = predict_all_exits(loaded.blocks, x)
    for k, (a, b) in enumerate(zip(got["exits"], expected), start=1):
        assert torch.allclose(a, b, atol=1e-4), f"exit {k}: max |diff| {(a - b).abs().max():.2g}"  # pinv: 5e-5
    ans = answer(LocalRunner(stages_of(loaded.blocks)), x, ExitPolicy(None, 0.5))
    assert torch.equal(got["pred"], ans.prediction) and torch.equal(got["exit"], ans.exit)
    assert torch.allclose(got["conf"], ans.confidence, atol=1e-5)


def test_export_to_an_unwritable_place_is_one_line(run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["export", str(run), "--out", str(tmp_path / "file" / "x")]) == 2
    assert capsys.readouterr().err.startswith("ray-al: error: --out ")
