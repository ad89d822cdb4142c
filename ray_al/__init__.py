"""ray_al: Associated Learning (Kao & Chen, 2021) as a pipeline of Ray actors.

The Python API (ray_al/api.py), imported on first use so that `import ray_al` stays light:
`load_config`, `train`, `load_run`, `predict`; the model registry: `register`, `Architecture`,
`model_names`; callbacks for `train`: `Callback`, `EarlyStopping`.
"""
__version__ = "0.1.0"

_LAZY = {"load_config": "ray_al.api", "train": "ray_al.api", "load_run": "ray_al.api", "predict": "ray_al.api",
         "register": "ray_al.models.registry", "Architecture": "ray_al.models.registry",
         "model_names": "ray_al.models.registry", "Callback": "ray_al.run.callbacks",
         "EarlyStopping": "ray_al.run.callbacks"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ray_al' has no attribute '{name}'")
