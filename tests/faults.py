"""Helpers for the fault tests: a thread that injects a fault once a run has saved enough."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from ray_al.checkpoint import complete_checkpoints


class FaultInjector:
    """Waits until `run_dir` has a complete checkpoint at or past `after_step`, then calls
    `fault(block_line)` with the start-up line naming where block `block` runs."""

    def __init__(self, run_dir: Path, after_step: int, block: int, fault, timeout: float = 120.0):
        self.run_dir, self.after_step, self.block, self.fault = run_dir, after_step, block, fault
        self.lines: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._watch, args=(timeout,), daemon=True)
        self.thread.start()

    def log(self, line: str) -> None:
        self.lines.append(line)

    def _watch(self, timeout: float) -> None:
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                where = [ln for ln in self.lines if ln.startswith(f"block {self.block}: node")]
                steps = complete_checkpoints(str(self.run_dir)) if self.run_dir.exists() else []
                if where and steps and steps[-1] >= self.after_step:
                    self.fault(where[0])
                    self.done.set()
                    return
                time.sleep(0.002)
        except BaseException as e:  # surfaced by the test
            self.error = e


def pid_of(line: str) -> int:
    return int(re.search(r" pid (\d+) ", line).group(1))


def node_of(line: str) -> str:
    return re.search(r"node ([0-9a-f]+) ", line).group(1)
