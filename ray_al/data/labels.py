"""Labels decide the size of the model, so they are checked before anything is built.

The number of classes K comes from `data.num_classes`, else from the class names the data
carries (Parquet metadata, torchvision), else from the labels themselves (max + 1), and then
every value in 0..K-1 must occur: a stray label of 1,000,000 would otherwise build a model
with a million outputs. Every label must be an integer in 0..K-1; a bad one is reported with
the file and row it came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ray_al.errors import DataError


@dataclass
class Origin:
    """Where the rows of a split came from: (file name, rows) in order, to name a bad row."""
    split: str
    files: list[tuple[str, int]] = field(default_factory=list)

    def where(self, i: int) -> str:
        if not self.files:
            return f"{self.split} sample {i}"
        ends = np.cumsum([n for _, n in self.files])
        k = int(np.searchsorted(ends, i, side="right"))
        start = int(ends[k - 1]) if k else 0
        return f"{self.files[k][0]} row {i - start}"


def column_labels(column, where: str) -> np.ndarray:
    """A pyarrow label column as int64; null, NaN, fractional and non-numeric labels are refused."""
    import pyarrow as pa

    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where} row {row}: the label is null")
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    if not pa.types.is_floating(column.type):
        raise DataError(f"{where}: labels must be integers, the label column holds {column.type}")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where} row {row}: the label {float(values[row])} is not an integer")
    return values.astype(np.int64)


def count_classes(configured: int | None, names: list[str], splits: list[tuple[np.ndarray, Origin]]) -> int:
    """K as described above; then every label of every split is checked against it."""
    labels = [y for y, _ in splits if len(y)]
    if configured is not None:
        if names and len(names) != configured:
            raise DataError(f"data.num_classes={configured} but the data names {len(names)} classes")
        k, source = configured, f"data.num_classes={configured}"
    elif names:
        k, source = len(names), f"the {len(names)} class names in the data"
    else:
        k, source = _from_labels(splits), "the labels"
    for y, origin in splits:
        bad = np.flatnonzero((y < 0) | (y >= k))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{origin.where(i)}: label {int(y[i])} is outside 0..{k - 1} ({k} classes from {source})")
    if k < 2 and labels:
        raise DataError(f"only one class ({source}): a classifier needs two or more")
    return k


def _from_labels(splits: list[tuple[np.ndarray, Origin]]) -> int:
    """max + 1, when every value below it occurs somewhere; otherwise the labels are suspect."""
    for y, origin in splits:
        if len(y) and y.min() < 0:
            i = int(np.argmin(y))
            raise DataError(f"{origin.where(i)}: label {int(y[i])} is negative")
    top, top_origin, top_i = -1, None, 0
    for y, origin in splits:
        if len(y) and int(y.max()) > top:
            top, top_origin, top_i = int(y.max()), origin, int(np.argmax(y))
    if top < 0:
        return 0
    present = np.unique(np.concatenate([y for y, _ in splits]))  # sorted; no array of size top + 1
    if len(present) < top + 1:
        missing = _first_missing(present, 5)
        shown = ", ".join(str(m) for m in missing) + (", ..." if top + 1 - len(present) > len(missing) else "")
        raise DataError(f"the labels run up to {top} ({top_origin.where(top_i)}) but {top + 1 - len(present):,} "
                        f"value(s) below it never occur ({shown}); set data.num_classes if the classes really "
                        f"are 0..{top}")
    return top + 1


def _first_missing(present: np.ndarray, count: int) -> list[int]:
    out, expected = [], 0
    for value in present.tolist():
        while expected < value and len(out) < count:
            out.append(expected)
            expected += 1
        if len(out) >= count:
            break
        expected = value + 1
    return out
