"""Datasets as tensors in memory: Parquet shards, torchvision, the embedded digits, synthetic.

Every source gives a `Dataset` of float32 images [n, C, H, W] (normalised per channel with
the training split's statistics) and int64 labels. Parquet images are decoded once and
cached as .npz, keyed by the shards' names, sizes and modification times.
"""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ray_al.config import DataConfig
from ray_al.data.images import cell_bytes, wide_grey_to_8_bits
from ray_al.data.labels import Origin, column_labels, count_classes
from ray_al.data.user_data import load_imagefolder, load_python
from ray_al.errors import DataError


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)
    val_x: torch.Tensor | None = None      # data.val_fraction of the training split, held out
    val_y: torch.Tensor | None = None
    mean: torch.Tensor | None = None       # the normalisation applied, per channel [C] (None: none)
    std: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


# -- Parquet ---------------------------------------------------------------------------
def _parquet_files(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-*.parquet"))


def _cache_path(folder: Path, files: list[Path], cache_dir: str | None) -> Path:
    key = hashlib.sha256()
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("RAY_AL_CACHE", Path.home() / ".cache" / "ray_al"))
    return base / f"{folder.name}-{key.hexdigest()[:16]}.npz"


def decode_png(cell) -> np.ndarray:
    """One Parquet image cell ({bytes, path} or raw bytes) -> uint8 [H, W, C]."""
    from PIL import Image

    img = np.asarray(wide_grey_to_8_bits(Image.open(io.BytesIO(cell_bytes(cell)))))
    return img if img.ndim == 3 else img[:, :, None]


def to_float(images) -> torch.Tensor:
    """uint8 pixels [n, C, H, W] -> float32 in [0, 1]; float data (a user's factory) is taken as it is."""
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise DataError(f"inputs must be uint8 pixels or floats, got {images.dtype}")
    return images.float()


def normalise(x, mean, std):
    """Per-channel (x - mean) / std for [n, C, H, W] (torch or NumPy), with the training split's mean and std [C]."""
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


def _decode_parquet(files: list[Path], split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, int]]]:
    import pyarrow.parquet as pq

    images, labels, names, counts = [], [], [], []
    for f in files:
        try:
            label = _label_column(pq.read_schema(f).names, f)
            table = pq.read_table(f, columns=["image", label])
        except DataError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"cannot read Parquet file {f}: {str(e).splitlines()[0]}") from None
        names = names or _class_names(table.schema.metadata, label)
        for cell in table.column("image").to_pylist():
            try:
                images.append(decode_png(cell))
            except Exception as e:
                raise DataError(f"cannot decode an image in {f}: {e}") from None
        labels.append(column_labels(table.column(label), str(f)))
        counts.append((str(f), table.num_rows))
    if not images:
        raise DataError(f"the {split} split in {files[0].parent} has no rows")
    if len({im.shape for im in images}) > 1:
        raise DataError(f"images of different shapes in {files[0].parent}")
    return np.stack(images).transpose(0, 3, 1, 2), np.concatenate(labels), names, counts


def _label_column(columns: list[str], f: Path) -> str:
    """`label`, or CIFAR-100's `fine_label` (the paper's 100 classes) where a folder has no `label`."""
    for name in ("label", "fine_label"):
        if name in columns:
            return name
    raise DataError(f"{f}: no 'label' or 'fine_label' column (columns: {', '.join(columns)})")


def _class_names(metadata, label: str = "label") -> list[str]:
    import json
    try:
        info = json.loads(metadata[b"huggingface"])
        return list(info["info"]["features"][label]["names"])
    except Exception:
        return []


def _load_split(folder: Path, split: str, cache_dir: str | None):
    """(x, y, class names, Origin) of one split, decoded once and then read from the .npz cache."""
    files = _parquet_files(folder, split)
    if not files:
        raise DataError(f"no {split}-*.parquet files in {folder}")
    cache = _cache_path(folder, files, cache_dir)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                origin = Origin(split, list(zip(z["files"].tolist(), z["counts"].tolist())))
                return z["x"], z["y"], list(z["names"]), origin
        except Exception as e:  # truncated, damaged or from an older layout: decode again and replace it
            print(f"data: cache {cache} is unreadable ({type(e).__name__}); decoding the shards again",
                  file=sys.stderr)
    if sys.stderr.isatty():  # someone waits at a terminal: say why nothing moves (logs need no such line)
        print(f"data: decoding {len(files)} {split} shard(s) of {folder.name} (once: later runs read {cache.name})",
              file=sys.stderr, flush=True)
    x, y, names, counts = _decode_parquet(files, split)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp.npz")  # concurrent runs
        np.savez(tmp, x=x, y=y, names=np.asarray(names, dtype=str),
                 files=np.asarray([f for f, _ in counts], dtype=str), counts=np.asarray([n for _, n in counts]))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs a decode next time
    return x, y, names, Origin(split, counts)


def peek(cfg: DataConfig) -> tuple[tuple, int] | None:
    """(input shape, number of classes) of the data, read cheaply and without decoding a whole split: a
    Parquet folder's first image and its label columns; the embedded and synthetic data from the config.
    Raises the DataError a load would (missing folder, no shards, no label column, unreadable file);
    None where only a full load can tell (torchvision, a factory, an image folder)."""
    if cfg.source == "digits":
        return (1, 8, 8), 10
    if cfg.source == "synthetic":  # a shape that is not (C, H, W) is the full load's to refuse, in its words
        return (tuple(cfg.synthetic_shape), cfg.num_classes or cfg.synthetic_classes) \
            if len(cfg.synthetic_shape) == 3 else None
    if cfg.source != "parquet":
        return None
    import pyarrow.parquet as pq

    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    files = {split: _parquet_files(folder, split) for split in ("train", "test")}
    for split, found in files.items():
        if not found:
            raise DataError(f"no {split}-*.parquet files in {folder}")
    top, f = 0, None
    try:
        for split, found in files.items():
            rows = 0
            for f in found:
                label = _label_column(pq.read_schema(f).names, f)
                column = pq.read_table(f, columns=[label]).column(label)
                top, rows = max(top, int(column_labels(column, str(f)).max(initial=-1)) + 1), rows + len(column)
            if not rows:
                raise DataError(f"the {split} split in {folder} has no rows")
        f = next(f for f in files["train"] if pq.ParquetFile(f).metadata.num_rows)
        first = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=["image"]))
        image = decode_png(first.column("image")[0].as_py())
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file, as the full load says
        raise DataError(f"cannot read Parquet file {f}: {str(e).splitlines()[0]}") from None
    names = _class_names(pq.read_schema(files["train"][0]).metadata, label)
    return (image.shape[2], *image.shape[:2]), cfg.num_classes or len(names) or top


def load_parquet(cfg: DataConfig):
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    tr_x, tr_y, names, tr_origin = _load_split(folder, "train", cfg.cache_dir)
    te_x, te_y, _, te_origin = _load_split(folder, "test", cfg.cache_dir)
    return tr_x, tr_y, te_x, te_y, names, folder.name, (tr_origin, te_origin)


# -- torchvision -------------------------------------------------------------------------
def load_torchvision(cfg: DataConfig):
    import torchvision.datasets as tvd

    classes = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
    if cfg.name not in classes:
        raise DataError(f"unknown torchvision dataset '{cfg.name}' (known: {', '.join(classes)})")
    root = Path(cfg.path or "~/.cache/ray_al/torchvision").expanduser()
    splits = []
    for train in (True, False):
        try:
            ds = classes[cfg.name](str(root), train=train, download=cfg.download)
        except RuntimeError as e:
            raise DataError(f"torchvision {cfg.name} not found under {root} ({str(e).splitlines()[0]}); "
                            f"set data.download=true on a machine with network access") from None
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        splits += [x, np.asarray(ds.targets, dtype=np.int64)]
    return (*splits, list(getattr(ds, "classes", [])), cfg.name)


# -- embedded and synthetic -----------------------------------------------------------------
def load_digits():
    """scikit-learn's 8x8 digits (1797 real images, shipped inside the package): 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target.astype(np.int64)[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:], [str(i) for i in range(10)], "digits"


def load_synthetic(cfg: DataConfig):
    """Gaussian blobs, one mean image per class: learnable, tiny, made in memory."""
    g = torch.Generator().manual_seed(0)
    shape, k, n = tuple(cfg.synthetic_shape), cfg.synthetic_classes, cfg.synthetic_size
    means = torch.rand(k, *shape, generator=g) * 255

    def sample(count):
        y = torch.randint(0, k, (count,), generator=g)
        x = (means[y] + cfg.synthetic_noise * torch.randn(count, *shape, generator=g)).clamp(0, 255)
        return x.to(torch.uint8).numpy(), y.numpy()

    tr_x, tr_y = sample(n)
    te_x, te_y = sample(max(n // 4, k))
    return tr_x, tr_y, te_x, te_y, [str(i) for i in range(k)], "synthetic"


# -- assembly --------------------------------------------------------------------------------
def subset_indices(total: int, n: int) -> np.ndarray:
    """n of `total` indices drawn at random (fixed seed, sorted), not the first n: some splits are
    sorted by class (CIFAR-10's Parquet test split starts with 1000 airplanes)."""
    return np.arange(total) if n >= total else np.sort(np.random.default_rng(0).permutation(total)[:n])


def _subset(x: np.ndarray, y: np.ndarray, n: int):
    if n >= len(x):
        return x, y
    keep = subset_indices(len(x), n)
    return x[keep], y[keep]


def hold_out(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0):
    """(train_x, train_y, val_x, val_y): `fraction` of the samples drawn at random with a fixed seed
    (order kept), so every run and every sweep trial validates on the same samples."""
    n_val = int(round(fraction * len(x)))
    if n_val == 0 or n_val == len(x):
        raise DataError(f"data.val_fraction={fraction} of {len(x)} training samples leaves an empty split")
    is_val = np.zeros(len(x), dtype=bool)
    is_val[np.random.default_rng(seed).permutation(len(x))[:n_val]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def check_finite(x: np.ndarray, origin: Origin, name: str) -> None:
    """Float inputs (a factory's) with NaN or Inf would surface only as "non-finite loss" in a block: name
    the first such sample instead. Pixels decoded from images are integers and always finite."""
    if x.dtype.kind != "f":
        return
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        first = x[bad[0]][~np.isfinite(x[bad[0]])][0]
        raise DataError(f"data {name}: {origin.where(int(bad[0]))} holds a non-finite value ({first}); "
                        f"{len(bad)} {origin.split} sample(s) in all")


def load_dataset(cfg: DataConfig) -> Dataset:
    origins = (Origin("train"), Origin("test"))
    if cfg.source == "parquet":
        tr_x, tr_y, te_x, te_y, names, name, origins = load_parquet(cfg)
    elif cfg.source == "torchvision":
        tr_x, tr_y, te_x, te_y, names, name = load_torchvision(cfg)
    elif cfg.source == "digits":
        tr_x, tr_y, te_x, te_y, names, name = load_digits()
    elif cfg.source == "synthetic":
        tr_x, tr_y, te_x, te_y, names, name = load_synthetic(cfg)
    elif cfg.source == "python":
        tr_x, tr_y, te_x, te_y, names, name = load_python(cfg)
    elif cfg.source == "imagefolder":
        tr_x, tr_y, te_x, te_y, names, name = load_imagefolder(cfg)
    else:
        raise DataError(f"unknown data source '{cfg.source}'")
    if tr_x.ndim != 4:
        raise DataError(f"images must be (C, H, W), got shape {tr_x.shape[1:]}")
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataError(f"train images are {tr_x.shape[1:]} (C, H, W) but test images are {te_x.shape[1:]}")
    for split, x, origin in (("train", tr_x, origins[0]), ("test", te_x, origins[1])):
        if len(x) == 0:
            raise DataError(f"the {split} split of {name} is empty")
        check_finite(x, origin, name)
    num_classes = count_classes(cfg.num_classes, names, [(tr_y, origins[0]), (te_y, origins[1])])
    if cfg.limit_train:
        tr_x, tr_y = _subset(tr_x, tr_y, cfg.limit_train)
    if cfg.limit_test:
        te_x, te_y = _subset(te_x, te_y, cfg.limit_test)
    va_x = va_y = None
    if cfg.val_fraction:
        tr_x, tr_y, va_x, va_y = hold_out(tr_x, tr_y, cfg.val_fraction)
    train_x, test_x = to_float(tr_x), to_float(te_x)
    val_x = None if va_x is None else to_float(va_x)
    mean = std = None
    if cfg.normalize:  # statistics of the samples trained on, applied to every split
        mean, std = train_x.mean(dim=(0, 2, 3)), train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
        train_x, test_x = normalise(train_x, mean, std), normalise(test_x, mean, std)
        val_x = None if val_x is None else normalise(val_x, mean, std)
    return Dataset(train_x, torch.from_numpy(tr_y), test_x, torch.from_numpy(te_y), num_classes, name, names,
                   val_x, None if va_y is None else torch.from_numpy(va_y), mean, std)
