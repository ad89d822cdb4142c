"""How raw inputs become model inputs, recorded in the run folder so prediction repeats training.

Training turns pixels into floats (uint8 / 255; float arrays are taken as they are) and, with
`data.normalize`, subtracts the training split's per-channel mean and divides by its std. The
run folder keeps those statistics in `preprocess.json` with the input shape, the resize of
`data.image_size` and the class names; `ray-al predict`, `serve` and `export` read it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ray_al.data.datasets import normalise, to_float
from ray_al.errors import DataError

FILE = "preprocess.json"


@dataclass
class Preprocess:
    input_shape: list[int]                       # (C, H, W) the model takes
    mean: list[float] | None = None              # per channel; None: not normalised
    std: list[float] | None = None
    image_size: list[int] | None = None          # image files are resized to [H, W] (data.image_size)
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data, image_size=None) -> "Preprocess":
        """From a loaded ray_al.data.datasets.Dataset."""
        flat = lambda t: None if t is None else [float(v) for v in t]  # noqa: E731
        return cls(list(data.input_shape), flat(data.mean), flat(data.std),
                   list(image_size) if image_size else None, list(data.class_names))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else normalise(x, torch.tensor(self.mean), torch.tensor(self.std))

    def __call__(self, x) -> torch.Tensor:
        """[n, C, H, W] (or [n, H, W] for one channel) uint8 or float -> the model's input; finite, or refused
        (a NaN input answered class 0 with confidence nan)."""
        kind = getattr(getattr(x, "dtype", None), "kind", "f")  # numpy's: strings, bytes, dates are no pixels
        if kind not in "biuf":
            raise DataError(f"inputs must be uint8 pixels or floats, got {x.dtype}")
        x = to_float(x)
        refuse_non_finite(x)
        if tuple(x.shape) == tuple(self.input_shape):
            x = x[None]  # one input
        elif x.ndim == 3 and self.input_shape[0] == 1:
            x = x[:, None]  # [n, H, W] grey
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(f"inputs are {tuple(x.shape[1:])} (C, H, W) but the model takes {tuple(self.input_shape)}")
        return self.normalise(x)

    def label(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)

    def save(self, run_dir: str | Path) -> None:
        Path(run_dir, FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, run_dir: str | Path) -> "Preprocess | None":
        path = Path(run_dir, FILE)
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def refuse_non_finite(x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1) if x.ndim else ~torch.isfinite(x)[None]
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        value = x[rows[0]][~torch.isfinite(x[rows[0]])].flatten()[0].item()
        raise DataError(f"input {rows[0]} holds a non-finite value ({value}); {len(rows)} input(s) in all: "
                        f"inputs must be finite numbers")
