"""RAY_AL_SLOW_BLOCK: a fixed sleep per chunk in chosen block actors, for tests, demos and the simulated
scaling benchmark (benchmarks/replica_scaling.py), where the sleep stands for a device's step.

    RAY_AL_SLOW_BLOCK="2:0.05"         block 2 (every replica of it) sleeps 50 ms per chunk
    RAY_AL_SLOW_BLOCK="*:0.05"         every block
    RAY_AL_SLOW_BLOCK="2/1:0.05"       replica 1 of block 2 only (ray.replicas_per_block > 1)
    RAY_AL_SLOW_BLOCK="1:0.05,2:0.1"   several, comma-separated; the first that matches applies
"""
from __future__ import annotations

import os


def chunk_delay(index: int, replica: int | None, spec: str | None = None) -> float:
    """Seconds block `index` (0-based), replica `replica`, sleeps per chunk; 0 when none is asked for. A
    delay that is not a number fails here (the actor reports it as its start-up error)."""
    spec = os.environ.get("RAY_AL_SLOW_BLOCK", "") if spec is None else spec
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        who, _, seconds = entry.partition(":")
        block, _, rep = who.partition("/")
        if block in ("*", str(index + 1)) and (not rep or rep == str(replica or 0)):
            return float(seconds)
    return 0.0
