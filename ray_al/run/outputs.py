"""Where a command may write what it makes (predictions, an export, a report, a sweep): never inside a run
folder or a checkpoint (those files are the run's: a prediction written over config.yaml lost the run),
and never over an existing output unless the user asked (--overwrite). One check for every command."""
from __future__ import annotations

from pathlib import Path

from ray_al.errors import ConfigError


def is_run_folder(folder: Path) -> bool:
    """config.yaml beside what only a run writes (older runs have no run.json)."""
    return (folder / "config.yaml").is_file() and any(
        (folder / name).exists() for name in ("run.json", "metrics.jsonl", "checkpoints"))


def is_checkpoint_folder(folder: Path) -> bool:
    """A checkpoint (step-N/ with its manifest) or a checkpoint location (checkpoints/step-N/ under it)."""
    if folder.name.startswith("step-") and (folder / "manifest.json").is_file():
        return True
    holder = folder / "checkpoints"
    return holder.is_dir() and any(p.name.startswith("step-") for p in holder.iterdir())


def run_holding(path: str | Path) -> Path | None:
    """The run folder or checkpoint that `path` is or lies in (symlinks followed), else None."""
    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        if folder.is_dir() and (is_run_folder(folder) or is_checkpoint_folder(folder)):
            return folder
    return None


def refuse_inside_a_run(path: str | Path, option: str = "--out") -> None:
    held = run_holding(path)
    if held is not None:
        what = "a run folder" if is_run_folder(held) else "a checkpoint"
        where = f"is {what}" if held == Path(path).expanduser().resolve() else f"lies in {what} ({held})"
        raise ConfigError(f"{option} {path} {where}, whose files are the run's: write somewhere else")


def check_output_file(path: str | Path | None, overwrite: bool = False, option: str = "--out") -> None:
    """A file a command is about to write: outside any run, in a folder that exists, new unless `overwrite`."""
    if path is None:
        return
    path = Path(path)
    refuse_inside_a_run(path, option)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give a file name (e.g. {path / 'answers.csv'})")
    if not path.expanduser().absolute().parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path} is an existing file: choose another {option}, or add --overwrite")


def check_output_folder(path: str | Path, holds_ours, overwrite: bool = False, option: str = "--out") -> list[Path]:
    """A folder a command fills: outside any run, a folder (or nothing yet), empty unless `overwrite`.
    Returns the files of an earlier output there (`holds_ours(name)`) for the caller to remove before
    writing, so two outputs never mix; anything else of the user's stays."""
    path = Path(path)
    refuse_inside_a_run(path, option)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is an existing file, not a folder")
    held = sorted(path.iterdir()) if path.is_dir() else []
    if held and not overwrite:
        names = ", ".join(p.name for p in held[:4]) + (", ..." if len(held) > 4 else "")
        raise ConfigError(f"{option} {path} already holds {names}: choose another {option}, or add --overwrite")
    return [p for p in held if p.is_file() and holds_ours(p.name)]
