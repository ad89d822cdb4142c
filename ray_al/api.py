"""The Python API: configure, train (through the Ray block actors or in this process), load a run,
predict. `import ray_al` exposes these names lazily (ray_al/__init__.py).

    import ray_al
    cfg = ray_al.load_config({"model": {"name": "tiny", "module": "my_models"}}, ["train.epochs=2"])
    result = ray_al.train(cfg)                    # result.history, result.run_dir
    answers = ray_al.predict(result.run_dir, ["digit.png"], threshold=0.9)
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from ray_al.config import Config, apply_overrides, changed, config_from_dict
from ray_al.config import load_config as _load_config_file
from ray_al.errors import ConfigError
from ray_al.inference.prediction import LoadedRun, load, predict
from ray_al.models.registry import builder_module

__all__ = ["load_config", "train", "load_run", "predict", "LoadedRun"]


def load_config(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> Config:
    """A config from a YAML file, a dict of sections, or None (the embedded digits demo), then
    dotted overrides such as "train.epochs=3"."""
    if isinstance(source, dict):
        return config_from_dict(apply_overrides(copy.deepcopy(source), list(overrides or [])))
    return _load_config_file(source, overrides)


def train(cfg: Config, log: Callable[[str], None] = print, resume_dir: str | Path | None = None,
          callbacks: list | None = None):
    """Train as configured; returns the RunResult (`history`: one record per epoch; `run_dir`).
    `callbacks`: ray_al.run.callbacks objects, e.g. [EarlyStopping("val_acc", patience=3)]."""
    from ray_al.run.loop import Hooks
    from ray_al.run.loop import train as run_train

    return run_train(with_model_module(cfg), log=log, resume_dir=resume_dir,
                     hooks=Hooks(callbacks=list(callbacks or [])))


def with_model_module(cfg: Config) -> Config:
    """A model registered by the caller's own module must be importable by every block actor: the config
    with that module as `model.module` (config.yaml keeps it for predict, serve and export).
    A model registered in the running script (`__main__`) cannot be imported elsewhere."""
    module = builder_module(cfg.model.name)
    if cfg.model.module or module is None or module.startswith("ray_al."):
        return cfg
    if module == "__main__":
        if cfg.train.trainer == "al":
            raise ConfigError(f"model '{cfg.model.name}' is registered in the running script (__main__), which the "
                              f"block actors do not run: move it into a module and set model.module to its name")
        return cfg
    return changed(cfg, {"model.module": module})


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """A run's newest checkpoint in this process: `.blocks`, `.cfg`, `.preprocess`, `.predict(inputs)`."""
    return load(run_dir, overrides)
