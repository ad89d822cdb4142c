"""Accuracy of every exit of a trained model, on the test split or another (val)."""
from __future__ import annotations

from typing import Iterable

import torch

from ray_al.core.record import exit_key, exits, last_exit_key


def exit_accuracies(batches: Iterable[list[torch.Tensor]], y: torch.Tensor) -> dict[str, float]:
    """Given per-batch lists of exit logits [exit 1, ..., exit N], the accuracy of each exit.
    `test_acc` is the last exit: the paper's prediction."""
    correct, seen = None, 0
    for logits in batches:
        yb = y[seen:seen + logits[0].shape[0]]
        hits = [int((out.argmax(dim=1).cpu() == yb).sum()) for out in logits]
        correct = hits if correct is None else [c + h for c, h in zip(correct, hits)]
        seen += len(yb)
    if not seen:
        return {}
    accs = {exit_key(k): c / seen for k, c in enumerate(correct, start=1)}
    accs[last_exit_key()] = correct[-1] / seen
    return accs


def split_accuracies(split: str, accs: dict[str, float]) -> dict[str, float]:
    """exit_accuracies of another split, renamed: {"val_exit_1": .., "val_acc": ..} for split "val"."""
    renamed = {last_exit_key(split): accs[last_exit_key()]}
    renamed.update({exit_key(k, split): v for k, v in exits(accs).items()})
    return renamed  # the target path's separability does not depend on the split


# -- class-distance metafeatures (paper Table 4) ------------------------------------------------
