"""How raw inputs become model inputs, recorded in the run folder so prediction repeats training.

Training turns pixels into floats (uint8 / 255; float arrays are taken as they are) and, with
`data.normalize`, subtracts the training split's per-channel mean and divides by its std. The
run folder keeps those statistics in `preprocess.json` with the input shape, the resize of
`data.image_size` and the class names; `ray-al predict`, `serve` and `export` read it.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ray_al.errors import DataError

FILE = "preprocess.json"
GRAY_MODES = ("1", "L", "LA", "I", "I;16")  # decoded as one channel; everything else as RGB


def to_float(x) -> torch.Tensor:
    """uint8 pixels -> [0, 1]; float data is the user's own scale and stays as it is."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise DataError(f"inputs must be uint8 pixels or floats, got {x.dtype}")
    return x.float()


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of [n, C, H, W], shaped [1, C, 1, 1]."""
    return x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


@dataclass
class Preprocess:
    input_shape: list[int]                       # (C, H, W) the model takes
    mean: list[float] | None = None              # per channel; None: not normalised
    std: list[float] | None = None
    image_size: list[int] | None = None          # image files are resized to [H, W] (data.image_size)
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data, image_size=None) -> "Preprocess":
        """From a loaded ray_al.data.Dataset."""
        flat = lambda t: None if t is None else [float(v) for v in t.flatten()]  # noqa: E731
        return cls(list(data.input_shape), flat(data.mean), flat(data.std),
                   list(image_size) if image_size else None, list(data.class_names))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)

    def __call__(self, x) -> torch.Tensor:
        """[n, C, H, W] (or [n, H, W] for one channel) uint8 or float -> the model's input."""
        x = to_float(x)
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


def decode_image(raw: bytes, channels: int, size: tuple[int, int] | None = None, resize: bool = False,
                 name: str = "image") -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 [C, H, W]: grey or RGB as the model takes, resized when the run
    resized its images, otherwise checked against (H, W)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise DataError(f"{name}: empty")
    try:
        img = Image.open(io.BytesIO(raw))
        img = img.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (no PNG, JPEG or other format Pillow reads)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({str(e).splitlines()[0]})") from None
    if size is not None and (img.height, img.width) != tuple(size):
        if not resize:
            raise DataError(f"{name}: image is {img.height}x{img.width}, expected {size[0]}x{size[1]}")
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
