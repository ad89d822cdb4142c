"""`ray-al runs [FOLDER ...]`: runs side by side, as MLflow's run table or Tune's ResultGrid shows them:
how far each got, its best and last accuracy, and the settings in which the runs differ."""
from __future__ import annotations

import json
from pathlib import Path

from ray_al.config import settings
from ray_al.errors import ConfigError, RayALError
from ray_al.run.storage import read_records, run_config

SAME_FOR_EVERY_RUN = ("run_dir", "name")  # where a run lives, not what it did


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run folder (it holds config.yaml) or a folder of them; oldest first."""
    found = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            found.append(path)
        elif path.is_dir():
            found += [p for p in path.iterdir() if (p / "config.yaml").is_file()]
        else:
            raise ConfigError(f"{path}: no such folder")
    return sorted(set(found), key=lambda p: (p.stat().st_mtime, p.name))


def summarize(run_dir: Path) -> dict:
    records, _ = read_records(run_dir / "metrics.jsonl")
    cfg = run_config(run_dir)
    row = {"run": run_dir.name, "model": cfg.model.name, "trainer": cfg.train.trainer,
           "epochs": f"{records[-1]['epoch'] if records else 0}/{cfg.train.epochs}",
           "done": (run_dir / "summary.json").is_file()}
    for metric in ("val_acc", "test_acc"):
        scored = [r for r in records if metric in r]
        if scored:
            best = max(scored, key=lambda r: r[metric])
            row[f"best_{metric}"], row[f"best_{metric}_epoch"] = best[metric], best["epoch"]
            row[f"last_{metric}"] = scored[-1][metric]
    return row


def differing(run_dirs: list[Path]) -> dict[Path, dict[str, object]]:
    """Per run, the settings in which the runs are not all alike (the same keys for every run)."""
    flat = [settings(run_config(r)) for r in run_dirs]
    keys = [k for k in flat[0] if not k.startswith(SAME_FOR_EVERY_RUN) and any(f[k] != flat[0][k] for f in flat)]
    return {r: {k: f[k] for k in keys} for r, f in zip(run_dirs, flat)}


def runs_table(paths: list[str | Path]) -> list[dict]:
    runs = find_runs(paths)
    if not runs:
        raise ConfigError(f"no run folders in {', '.join(map(str, paths))}")
    rows = []
    diffs = differing(runs)
    for run in runs:
        try:
            rows.append({**summarize(run), **diffs[run]})
        except RayALError as e:
            rows.append({"run": run.name, "error": str(e)})
    return rows


def format_runs(rows: list[dict]) -> str:
    def cell(row, key):
        value = row.get(key)
        if key.startswith(("best_", "last_")) and not key.endswith("_epoch") and value is not None:
            epoch = row.get(f"{key}_epoch")
            return f"{value:.4f}" + (f" (ep {epoch})" if epoch is not None else "")
        return "-" if value is None else str(value)

    fixed = ["run", "model", "trainer", "epochs", "done", "best_val_acc", "last_val_acc", "best_test_acc",
             "last_test_acc"]
    keys = [k for k in fixed if any(k in r for r in rows)]
    keys += [k for k in dict.fromkeys(k for r in rows for k in r) if k not in fixed and not k.endswith("_epoch")]
    table = [keys] + [[cell(r, k) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)


def print_runs(paths: list[str | Path], as_json: bool = False) -> None:
    rows = runs_table(paths)
    print(json.dumps(rows, indent=1) if as_json else format_runs(rows))
