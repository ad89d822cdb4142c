"""The epoch record: one flat dict per epoch, a line of `metrics.jsonl`. Its indexed keys are built and
read here and nowhere else:

    b{i}_{loss}      block i's mean loss over the epoch (bridge_loss, ae_loss; BP: loss)
    exit_{k}         test accuracy of exit k; `test_acc` is the last exit (the paper's prediction)
    {split}_exit_{k} the same on another split (val); `{split}_acc` its last exit
    sep_acc_{k}      the fraction of class targets at depth k that decode back to their class
    sep_dist_{k}     mean pairwise distance of the class targets at depth k

plus plain keys (epoch, step, train_time_s, samples_per_s, ...). `LossSums` is the one accumulator of
per-chunk block losses that the progress line and the loggers share.
"""
from __future__ import annotations

import re
from typing import Iterable

_INDEXED = re.compile(r"^(.*?)(\d+)$")


def loss_key(block: int, loss: str) -> str:
    return f"b{block}_{loss}"


def exit_key(k: int, split: str = "test") -> str:
    return f"exit_{k}" if split == "test" else f"{split}_exit_{k}"


def last_exit_key(split: str = "test") -> str:
    return f"{split}_acc"


def sep_acc_key(k: int) -> str:
    return f"sep_acc_{k}"


def sep_dist_key(k: int) -> str:
    return f"sep_dist_{k}"


def indexed(record: dict, prefix: str) -> dict[int, float]:
    """{k: value} of the keys `prefix{k}` (e.g. prefix "exit_" or "sep_acc_"), in order of k."""
    found = {}
    for key, value in record.items():
        m = _INDEXED.match(key)
        if m and m.group(1) == prefix:
            found[int(m.group(2))] = value
    return dict(sorted(found.items()))


def exits(record: dict, split: str = "test") -> dict[int, float]:
    return indexed(record, exit_key(0, split)[:-1])


def separability(record: dict) -> dict[int, float]:
    return indexed(record, "sep_acc_")


def indexed_keys(records: Iterable[dict], prefix: str) -> list[int]:
    """Every k of `prefix{k}` found in any of the records, sorted."""
    return sorted({k for r in records for k in indexed(r, prefix)})


def losses(record: dict) -> dict[str, float]:
    """The loss keys of a record (per block, or BP's one), in the record's order."""
    return {k: v for k, v in record.items() if k.endswith("loss")}


def chunk_losses(stats: list[dict]) -> dict[str, float]:
    """Every block's losses of one chunk (each block's stats dict), named as in the epoch record."""
    return {loss_key(st["block"], key): value for st in stats for key, value in st.items() if key.endswith("loss")}


class LossSums:
    """Step-weighted sums of every block's chunk losses; `mean()` is their mean over the steps added."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, stats: list[dict]) -> int:
        """Adds one chunk (its blocks' stats); returns the chunk's step count."""
        k = stats[-1]["steps"]
        for name, value in chunk_losses(stats).items():
            self.sums[name] = self.sums.get(name, 0.0) + value * k
        self.steps += k
        return k

    def mean(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}
