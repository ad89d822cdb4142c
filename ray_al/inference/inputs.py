"""What `ray-al predict` and `ray-al serve` accept, read into model inputs exactly as training
preprocessed its own: image files (PNG, JPEG, ...), folders of them, `.npy` arrays ([n, C, H, W],
[n, H, W] or one [C, H, W]) and Parquet files in the datasets' layout (an `image` column of PNG
bytes), through the run's `preprocess.json` (ray_al/data/preprocess.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ray_al.data.images import IMAGE_SUFFIXES, cell_bytes, decode_image
from ray_al.data.preprocess import Preprocess
from ray_al.errors import DataError


def read_inputs(items, pre: Preprocess) -> tuple[list[str], torch.Tensor]:
    """Paths (files, folders, .npy, .parquet) or an array/tensor of raw inputs -> (names, model inputs)."""
    if isinstance(items, (np.ndarray, torch.Tensor)):
        x = pre(items)
        if not len(x):
            raise DataError("no inputs given (0 rows)")
        return [str(i) for i in range(len(x))], x
    names, arrays = [], []
    for item in [items] if isinstance(items, (str, Path)) else items:
        for name, x in _read_path(Path(item), pre):
            names += name
            arrays.append(x)
    if not arrays:
        raise DataError("no inputs given")
    return names, torch.cat(arrays)


def image_args(pre: Preprocess) -> tuple:
    """decode_image's (channels, size, resize) for the model: the run's resize, or its input size exactly."""
    size = pre.image_size or pre.input_shape[1:]
    return pre.input_shape[0], tuple(size), pre.image_size is not None


def _read_path(path: Path, pre: Preprocess):
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files in this folder")
        for f in files:
            yield from _read_path(f, pre)
        return
    if not path.is_file():
        raise DataError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        yield [str(path)], pre(decode_image(path.read_bytes(), *image_args(pre), name=str(path))[None])
    elif suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        if x.ndim == 0 or not len(x):
            raise DataError(f"{path}: holds no inputs (shape {x.shape})")
        try:
            x = pre(x)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        yield [f"{path}[{i}]" for i in range(len(x))], x
    elif suffix == ".parquet":
        yield _read_parquet(path, pre)
    else:
        raise DataError(f"{path}: not an image, folder, .npy or .parquet input")


def _read_parquet(path: Path, pre: Preprocess):
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file or a missing column
        raise DataError(f"{path}: cannot read an 'image' column ({str(e).splitlines()[0]})") from None
    if not column:
        raise DataError(f"{path}: holds no inputs (0 rows)")
    images = [decode_image(cell_bytes(cell), *image_args(pre),
                           name=f"{path}[{i}]") for i, cell in enumerate(column)]
    return [f"{path}[{i}]" for i in range(len(images))], pre(np.stack(images))
