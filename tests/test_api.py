"""The Python API: `import ray_al` stays light, and load_config / train / load_run / predict /
register work together; the README's example runs (here in one process; its Ray path is
tests/test_user_model.py)."""
import subprocess
import sys

import pytest

import ray_al
from ray_al.errors import ConfigError
from tests.helpers import REPO


def test_import_is_light_and_names_resolve_on_use():
    code = ("import sys, ray_al; assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; "
            "names = [getattr(ray_al, n) for n in ray_al.__all__]; print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == str(len(ray_al.__all__)), proc.stderr
    assert {"load_config", "train", "load_run", "predict", "register"} <= set(ray_al.__all__)
    with pytest.raises(AttributeError):
        ray_al.no_such_name  # noqa: B018


def test_train_load_predict_from_python(tmp_path):
    cfg = ray_al.load_config({"model": {"d": 32}, "train": {"trainer": "al_local", "log_every_s": 0}},
                             ["train.epochs=2", "optim.lr=1e-2", f"run_dir={tmp_path}"])
    result = ray_al.train(cfg, log=lambda line: None)
    assert [r["epoch"] for r in result.history] == [1, 2] and (result.run_dir / "preprocess.json").is_file()
    run = ray_al.load_run(result.run_dir)
    from ray_al.data.datasets import load_dataset
    raw = (load_dataset(run.cfg.data.__class__(normalize=False)).test_x[:30] * 255).round().byte()
    answers = ray_al.predict(result.run_dir, raw, exit=1)
    assert answers == run.predict(raw, exit=1) and {a["exit"] for a in answers} == {1}
    assert sum(a["prediction"] == int(y) for a, y in zip(answers, run_labels(run)[:30])) > 15


def run_labels(run):
    from ray_al.data.datasets import load_dataset
    return load_dataset(run.cfg.data).test_y


def test_model_module_is_recorded_for_the_actors(tmp_path, monkeypatch):
    (tmp_path / "api_models.py").write_text(
        "import torch.nn as nn\nfrom ray_al import Architecture, register\n\n"
        "@register('api_mlp')\ndef api_mlp(input_shape, num_classes, act, d=16):\n"
        "    return Architecture([nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act()),"
        " nn.Sequential(nn.Linear(32, 32), act())], d)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import api_models  # noqa: F401  (registers 'api_mlp' here, as a user's script would)

    from ray_al.api import with_model_module
    cfg = ray_al.load_config({"model": {"name": "api_mlp"}})
    assert with_model_module(cfg).model.module == "api_models"  # the actors import it before the lookup
    assert cfg.model.module is None  # the caller's config is left as it was


def test_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "own_model.py"), "train.trainer=al_local",
                           "train.epochs=2", f"run_dir={tmp_path}"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "val_acc" in lines[-6] and all(line.startswith("{'input'") for line in lines[-5:])


def test_unknown_config_section_is_one_line():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        ray_al.load_config({"trian": {}})
