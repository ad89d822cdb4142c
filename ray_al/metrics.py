"""Accuracy of every exit; class-distance metafeatures and t-SNE live beside it."""
from __future__ import annotations

from typing import Iterable

import torch


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
    accs = {f"exit_{k}": c / seen for k, c in enumerate(correct, start=1)}
    accs["test_acc"] = correct[-1] / seen
    return accs
