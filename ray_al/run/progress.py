"""What a run prints within an epoch: on a terminal, a progress bar (tqdm: steps, samples/s, ETA and the
current losses); otherwise (logs, `ray job logs`, CI) a plain line every few seconds. One line per epoch."""
from __future__ import annotations

import sys
import time
from typing import Callable

from ray_al.core import record as rec
from ray_al.core.target_path import format_separability

Log = Callable[[str], None]


class Progress:
    """Sums every block's losses over an epoch and shows them: a bar when `bar`, else a line every
    `interval` seconds."""

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, log: Log, interval: float,
                 loggers=None, bar: bool = False):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.log, self.interval, self.loggers = log, interval, loggers  # loggers: ray_al.run.loggers.RunLoggers
        self.losses = rec.LossSums()
        self.start = self.last = time.perf_counter()
        self.bar = None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", dynamic_ncols=True,
                            leave=False, file=sys.stdout)

    def __call__(self, stats: list[dict]) -> None:
        k = self.losses.add(stats)
        if self.loggers:
            self.loggers.log_chunk(stats)
        now = time.perf_counter()
        if self.bar is not None:
            rate = self.done * self.batch_size / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s {self._losses()}", refresh=False)
            self.bar.update(k)
            return
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

    def evaluating(self, what: str) -> None:
        """The bar says what the run does between its last step and the epoch's line."""
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {self.epoch}/{self.epochs}: {what}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

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
