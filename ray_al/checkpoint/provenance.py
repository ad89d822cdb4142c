"""What made a run: the package version, its git commit when it runs from a checkout, torch and Ray,
and the Ray job submission that ran it (`ray job submit`), if any.

Recorded in every `summary.json` and checkpoint manifest, and printed by `ray-al --version`.
"""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the checkout the package runs from ("+dirty" with uncommitted changes); None
    for an installed wheel or where git is missing."""
    folder = folder or Path(__file__).resolve().parent
    try:
        run = functools.partial(subprocess.run, cwd=folder, capture_output=True, text=True, timeout=5)
        head = run(["git", "rev-parse", "HEAD"])
        if head.returncode != 0:
            return None
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Asked once per process (git takes milliseconds; a run saves many checkpoints)."""
    from ray_al import __version__
    made = {"ray_al": __version__, "git_commit": git_commit(), "torch": _version("torch"),
            "ray": _version("ray"), "python": platform.python_version()}
    job = ray_job_submission_id()
    return {**made, "ray_job_submission_id": job} if job else made


def ray_job_submission_id() -> str | None:
    """The submission id `ray job submit` gave this driver (`ray job logs/stop ID`), read from the job
    config Ray's job supervisor passes in the environment; None outside a submitted job."""
    import json
    import os

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return config.get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def version_line() -> str:
    p = provenance()
    commit = f", git {p['git_commit']}" if p["git_commit"] else ""
    return f"ray-al {p['ray_al']}{commit} (torch {p['torch']}, ray {p['ray']}, python {p['python']})"
