"""Your own data: a Python factory (`data.source: python`) or a folder of images per class
(`data.source: imagefolder`). Both give what the built-in sources give: train and test arrays
[n, C, H, W] (uint8 pixels, or floats taken as they are), int64 labels and class names.

A factory is `data.factory: my_pkg.my_data:make` called with `data.factory_args`; it returns
`(train, test)` (or a mapping with those keys), each either a pair of tensors/arrays `(x, y)` or
a `torch.utils.data.Dataset` whose items are `(image, label)` (tensor, array or PIL image).

An image folder is torchvision's ImageFolder layout, class names from the folder names in
sorted order: `root/train/<class>/*.png` and `root/test/<class>/*.png`, or `root/<class>/*.png`
split into test and train with `data.test_fraction` (seeded).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ray_al.config import DataConfig
from ray_al.data.images import GRAY_MODES, IMAGE_SUFFIXES, decode_image
from ray_al.errors import DataError
from ray_al.user_import import import_user_module


# -- python factory -------------------------------------------------------------------------------
def call_factory(cfg: DataConfig):
    module, _, fn = cfg.factory.partition(":")
    imported = import_user_module(module, f"data.factory '{cfg.factory}'", DataError)
    try:
        factory = getattr(imported, fn)
    except AttributeError as e:
        raise DataError(f"data.factory '{cfg.factory}' cannot be loaded: AttributeError: {e}") from None
    try:
        return factory(**cfg.factory_args)
    except Exception as e:
        raise DataError(f"data.factory '{cfg.factory}' failed: {type(e).__name__}: {e}") from None


def _as_array(v, what: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    try:
        from PIL import Image
        if isinstance(v, Image.Image):
            arr = np.asarray(v)
            return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    except ImportError:
        pass
    try:
        return np.asarray(v)
    except Exception:
        raise DataError(f"data.factory: {what} is a {type(v).__name__}, not a tensor, array or image") from None


def _split_arrays(part, split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(part, torch.utils.data.Dataset):
        if len(part) == 0:
            raise DataError(f"{source}: the {split} dataset is empty")
        items = [part[i] for i in range(len(part))]
        x = np.stack([_as_array(item[0], f"{split} item 0") for item in items])
        y = np.asarray([item[1].item() if hasattr(item[1], "item") else item[1] for item in items])
    elif isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = _as_array(part[0], f"{split} x"), _as_array(part[1], f"{split} y")
    else:
        raise DataError(f"{source}: the {split} split must be (x, y) or a torch Dataset, got {type(part).__name__}")
    if x.ndim == 3:
        x = x[:, None]  # [n, H, W]: one channel
    if x.ndim != 4:
        raise DataError(f"{source}: {split} x must be [n, C, H, W] or [n, H, W], got shape {x.shape}")
    if len(x) != len(y):
        raise DataError(f"{source}: {split} has {len(x)} inputs but {len(y)} labels")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    return x, _labels(y, f"{source}: {split} labels")


def _labels(y, where: str) -> np.ndarray:
    """Integer class indices, checked as a Parquet label column is (strings, NaN, fractions refused in one line)."""
    import pyarrow as pa

    from ray_al.data.labels import column_labels

    y = np.asarray(y)
    if y.dtype == bool:  # two classes as False/True
        y = y.astype(np.int64)
    if y.ndim != 1:
        raise DataError(f"{where}: expected one label per input, got shape {y.shape}")
    try:
        column = pa.array(y)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        raise DataError(f"{where}: labels must be integers, got {y.dtype} values") from None
    return column_labels(column, where)


def load_python(cfg: DataConfig):
    out = call_factory(cfg)
    source = f"data.factory '{cfg.factory}'"
    names = []
    if isinstance(out, dict):
        names = [str(n) for n in out.get("class_names", [])]
        if "train" not in out or "test" not in out:
            raise DataError(f"{source} returned a mapping without 'train' and 'test'")
        out = (out["train"], out["test"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise DataError(f"{source} must return (train, test), got {type(out).__name__}")
    (tr_x, tr_y), (te_x, te_y) = (_split_arrays(p, s, source) for p, s in zip(out, ("train", "test")))
    names = names or [str(c) for c in getattr(out[0], "classes", [])]
    return tr_x, tr_y, te_x, te_y, names, cfg.factory.partition(":")[0].rsplit(".", 1)[-1]


# -- image folder ---------------------------------------------------------------------------------
def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    files = {name: fs for name, fs in files.items() if fs}
    if not files:
        raise DataError(f"{root}: no class folders with images (expected {root}/<class>/*.png)")
    return files


def _channels(files: list[Path]) -> int:
    from PIL import Image

    for f in files:
        with Image.open(f) as img:
            if img.mode not in GRAY_MODES:
                return 3
    return 1


def _decode_all(files: list[Path], channels: int, size, resize: bool) -> np.ndarray:
    return np.stack([decode_image(f.read_bytes(), channels, size, resize, name=str(f)) for f in files])


def load_imagefolder(cfg: DataConfig):
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_files(root / "train"), _class_files(root / "test")
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(f"{root}/test has classes that train lacks: {', '.join(unknown)}")
        names = sorted(train)
        pairs = {s: [(f, names.index(c)) for c, fs in d.items() for f in fs] for s, d in
                 (("train", train), ("test", test))}
    else:
        files = _class_files(root)
        names = sorted(files)
        every = [(f, names.index(c)) for c, fs in files.items() for f in fs]
        order = np.random.default_rng(0).permutation(len(every))
        cut = max(1, int(round(cfg.test_fraction * len(every))))
        pairs = {"test": [every[i] for i in sorted(order[:cut])], "train": [every[i] for i in sorted(order[cut:])]}
    all_files = [f for s in pairs.values() for f, _ in s]
    channels = _channels(all_files)
    if cfg.image_size:
        size, resize = tuple(cfg.image_size), True
    else:
        from PIL import Image
        with Image.open(all_files[0]) as first:
            size, resize = (first.height, first.width), False
    out = []
    for split in ("train", "test"):
        if not pairs[split]:
            raise DataError(f"{root}: no {split} images")
        out += [_decode_all([f for f, _ in pairs[split]], channels, size, resize),
                np.asarray([k for _, k in pairs[split]], dtype=np.int64)]
    return (*out, names, root.name)
