"""What a run prints: a progress line every few seconds within an epoch, one line per epoch."""
from __future__ import annotations

import time
from typing import Callable

from ray_al.core import record as rec
from ray_al.core.target_path import format_separability

Log = Callable[[str], None]


class Progress:
    """Sums every block's losses over an epoch and prints a line every `interval` seconds."""

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, log: Log, interval: float,
                 loggers=None):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.log, self.interval, self.loggers = log, interval, loggers  # loggers: ray_al.run.loggers.RunLoggers
        self.losses = rec.LossSums()
        self.start = self.last = time.perf_counter()

    def __call__(self, stats: list[dict]) -> None:
        self.losses.add(stats)
        if self.loggers:
            self.loggers.log_chunk(stats)
        now = time.perf_counter()
        if self.interval and now - self.last >= self.interval and self.done < self.steps:
            self.last = now
            rate = self.done * self.batch_size / (now - self.start)
            self.log(f"  epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps} "
                     f"{rate:,.0f} samples/s {self._losses()}")

    @property
    def done(self) -> int:
        return self.losses.steps

    def summary(self) -> dict:
        return self.losses.mean()

    def _losses(self) -> str:
        return " ".join(f"{k}={v:.4f}" for k, v in self.summary().items())


def format_record(r: dict) -> str:
    exits = [f"{acc:.4f}" for acc in rec.exits(r).values()]
    losses = " ".join(f"{k}={v:.4f}" for k, v in rec.losses(r).items())
    line = (f"epoch {r['epoch']}/{r['epochs']} train {r['train_time_s']:.1f}s ({r['samples_per_s']:,.0f} samples/s) "
            f"{losses}" + (f" val_acc={r['val_acc']:.4f}" if "val_acc" in r else "") + f" test_acc={r['test_acc']:.4f}")
    line += f" exits=[{' '.join(exits)}]" if len(exits) > 1 else ""
    sep = format_separability(r)
    return line + (f" {sep}" if sep else "")
