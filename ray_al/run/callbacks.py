"""Callbacks a run calls as it trains, as a Lightning or Ray Train user expects them:
`ray_al.train(cfg, callbacks=[EarlyStopping("val_acc", patience=3)])`.

A callback overrides what it needs; setting `stop_training` (with a `reason`) ends the run after the
epoch being recorded: that epoch's record and checkpoint are kept, and `--resume` can go on from it.
"""
from __future__ import annotations

import math

from ray_al.errors import ConfigError


class Callback:
    stop_training: bool = False
    reason: str = ""

    def on_epoch_end(self, record: dict) -> None:
        """After each epoch, with its record (the line of metrics.jsonl)."""


class EarlyStopping(Callback):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` epochs in a row."""

    def __init__(self, metric: str = "val_acc", patience: int = 3, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ConfigError(f"EarlyStopping mode must be max or min, got '{mode}'")
        if patience < 1:
            raise ConfigError(f"EarlyStopping patience must be at least 1, got {patience}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best, self.best_epoch, self.waited = -math.inf if mode == "max" else math.inf, None, 0

    def on_epoch_end(self, record: dict) -> None:
        if self.metric not in record:
            hint = " (val_acc needs data.val_fraction > 0)" if self.metric.startswith("val_") else ""
            raise ConfigError(f"EarlyStopping: the epoch record has no '{self.metric}'{hint}")
        value = record[self.metric]
        better = value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        if better:
            self.best, self.best_epoch, self.waited = value, record["epoch"], 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.stop_training = True
            self.reason = (f"{self.metric} has not improved for {self.patience} epoch(s) "
                           f"(best {self.best:.4f} at epoch {self.best_epoch})")
