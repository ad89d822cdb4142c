"""Where the benchmarks find the real datasets: --data, RAY_AL_DATASETS, or ../shared/datasets."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def datasets_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("RAY_AL_DATASETS", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        raise SystemExit(f"datasets not found at {root}: pass --data DIR (a folder with mnist/ and cifar10/)")
    return root
