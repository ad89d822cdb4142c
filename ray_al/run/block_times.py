"""Where a pipeline waits: each block's measured seconds per step, printed once per run.

Every block reports `compute_s` per chunk (block_trainer.py). A pipeline can go no faster than its
slowest block, the critical path, so one line after the first chunks shows which block that is.
"""
from __future__ import annotations

from typing import Callable


def format_block_times(ms_per_step: list[float]) -> str:
    slowest = max(range(len(ms_per_step)), key=ms_per_step.__getitem__)
    times = ", ".join(f"{i}: {ms:.1f} ms" for i, ms in enumerate(ms_per_step, start=1))
    return f"block times per step: {times}; critical path: block {slowest + 1}"


class BlockTimes:
    """Sums each block's compute seconds over `measure` chunks after the first (which pays for start-up:
    allocation, first-touch, lazy init), then logs the line once; `flush` logs it from what there is when
    a run has fewer chunks. One block (the BP twin) has no pipeline to report on."""

    def __init__(self, log: Callable[[str], None], measure: int = 3):
        self.log, self.measure = log, measure
        self.chunks, self.seconds, self.steps, self.first = 0, {}, {}, None
        self.done = False

    def __call__(self, stats: list[dict]) -> None:
        if self.done or len(stats) < 2 or any("compute_s" not in st for st in stats):
            return
        self.chunks += 1
        if self.chunks == 1:
            self.first = stats
            return
        self._add(stats)
        if self.chunks > self.measure:
            self.flush()

    def _add(self, stats: list[dict]) -> None:
        for st in stats:
            self.seconds[st["block"]] = self.seconds.get(st["block"], 0.0) + st["compute_s"]
            self.steps[st["block"]] = self.steps.get(st["block"], 0) + st["steps"]

    def flush(self) -> None:
        if self.done or (not self.seconds and self.first is None):
            return
        if not self.seconds:  # a one-chunk run: the first chunk is all there is
            self._add(self.first)
        self.done = True
        self.log(format_block_times([1000 * self.seconds[b] / max(self.steps[b], 1) for b in sorted(self.seconds)]))
