"""A run's paths: its folder and where its checkpoints go (as Ray's StorageContext owns a trial's).

    runs/<name>/run.json          the run's identity: run_id, created, and any change made on resume
    runs/<name>/config.yaml       the resolved config (what made the run)
    runs/<name>/metrics.jsonl     one record per epoch, each with the run_id
    runs/<name>/summary.json      the final record and the restarts
    runs/<name>/checkpoints/      or checkpoint.uri/<name>/checkpoints/ (any pyarrow.fs URI)

A run keeps its settings beside its results, as in cifar10-airbench. Nothing of two runs mixes: a new
run refuses a folder (or checkpoint location) that holds anything, default names carry a random
suffix, and one process at a time holds a run (an fcntl lock on the folder, and on a local checkpoint
location); every manifest and record carries the run's id.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path

import pyarrow.fs as pafs

from ray_al.checkpoint.files import location
from ray_al.config import Config, apply_overrides, config_from_dict, read_yaml, save_config
from ray_al.errors import CheckpointError, ConfigError

LOCK = ".lock"
IDENTITY = "run.json"
# what --resume may change without --allow-change: how the run is carried out, not what it learns
SAFE_ON_RESUME = ("train.epochs", "train.log_every_s", "train.threads", "train.eval_batch_size", "train.device",
                  "train.max_inflight_chunks", "ray.", "checkpoint.keep", "checkpoint.max_restarts",
                  "data.cache_dir", "run_dir")


class RunStorage:
    def __init__(self, run_dir: str | Path, checkpoint_base: str | None):
        self.run_dir = Path(run_dir)
        # checkpoint.uri is resolved once and the run's name joined inside its filesystem: appended to
        # the URI, the name would land in a query string (s3://bucket/runs?endpoint_override=...)
        self.checkpoint_uri = (location(checkpoint_base).join(self.run_dir.name) if checkpoint_base
                               else str(self.run_dir))
        self.run_id: str | None = None
        self._locks: list[int] = []
        self._created = False

    @classmethod
    def create(cls, cfg: Config) -> RunStorage:
        """A new run folder under cfg.run_dir, locked and checked empty (as its checkpoint location)."""
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"  # two runs in one second differ
        name = cfg.name or f"{cfg.model.name}-{cfg.train.trainer}-{stamp}"
        path = Path(cfg.run_dir).expanduser() / name
        storage = cls(path, cfg.checkpoint.uri)  # resolves checkpoint.uri before anything is made
        try:
            existed = path.exists()
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{secrets.token_hex(4)}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"run folder {path} is not writable: {e.strerror or e}") from None
        storage._created = not existed
        try:
            storage.lock()
            held = sorted(p.name for p in path.iterdir() if p.name != LOCK)
            if held:
                raise ConfigError(f"run folder {path} already holds a run ({', '.join(held[:4])}): choose another "
                                  f"name=, or continue it with --resume {path}")
            if cfg.checkpoint.uri:
                storage._check_checkpoint_location_empty()
            storage.run_id = secrets.token_hex(8)
            (path / IDENTITY).write_text(json.dumps({"run_id": storage.run_id, "created": time.time(),
                                                     "changes": []}, indent=1))
        except BaseException:
            storage.discard()
            raise
        return storage

    @classmethod
    def resume(cls, run_dir: str | Path, checkpoint_base: str | None) -> RunStorage:
        storage = cls(run_dir, checkpoint_base)
        if not (storage.run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
        storage.lock()
        storage.run_id = storage.identity().get("run_id")
        return storage

    # -- one process per run ----------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the run folder (and a local checkpoint location) for this process, or say who holds it."""
        places = [self.run_dir]
        loc = location(self.checkpoint_uri)
        if isinstance(loc.fs, pafs.LocalFileSystem) and Path(loc.path).resolve() != self.run_dir.resolve():
            places.append(Path(loc.path))
        for place in places:
            try:
                place.mkdir(parents=True, exist_ok=True)
                fd = os.open(place / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self.close()
                raise CheckpointError(f"cannot write checkpoint files under {place}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                self.close()
                raise ConfigError(f"{place} is in use by another ray-al process (pid {holder}); "
                                  f"wait for it to end, or choose another name=") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._locks.append(fd)

    def close(self) -> None:
        for fd in self._locks:
            os.close(fd)  # releases the lock
        self._locks = []

    def discard(self) -> None:
        """Undo a start that failed before training: a new folder holding only what create() wrote goes."""
        if self._created and self._locks:  # ours alone: we made it and hold it
            for name in (IDENTITY, "config.yaml", "preprocess.json", LOCK):
                (self.run_dir / name).unlink(missing_ok=True)
            try:
                self.run_dir.rmdir()
            except OSError:
                pass  # something else is in it now: keep it
        self.close()

    def _check_checkpoint_location_empty(self) -> None:
        loc = location(self.checkpoint_uri).join("checkpoints")
        try:
            infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
        except OSError:
            return
        if infos:
            raise ConfigError(f"checkpoint location {loc} already holds checkpoints of another run: choose "
                              f"another name= or checkpoint.uri")

    # -- files -----------------------------------------------------------------------------------
    def identity(self) -> dict:
        path = self.run_dir / IDENTITY
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}

    def owners(self) -> set[str | None]:
        """The run ids whose checkpoints this run loads: its own (None for a run from before run ids) and
        those it adopted on record."""
        identity = self.identity()
        adopted = [a.get("run_id") for a in identity.get("adopted", []) if isinstance(a, dict)]
        return {self.run_id or identity.get("run_id"), *(a for a in adopted if isinstance(a, str))}

    def adopt(self, run_id: str, step: int, why: str) -> None:
        """Load checkpoints of run `run_id` from now on (Tune's PBT hands a trial another trial's), kept in
        run.json: the one explicit way another run's checkpoint is accepted. Gives a run without an
        identity one first."""
        identity = self.identity()
        if not identity.get("run_id"):
            identity = {"run_id": secrets.token_hex(8), "created": time.time(), "changes": [], **identity}
        self.run_id = identity["run_id"]
        identity.setdefault("adopted", []).append({"run_id": run_id, "step": step, "time": time.time(), "why": why})
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / IDENTITY).write_text(json.dumps(identity, indent=1))

    def record_change(self, changes: dict) -> None:
        """A resume that changed the config (--allow-change): kept in run.json beside the new config.yaml."""
        identity = self.identity()
        identity.setdefault("changes", []).append({"time": time.time(), "changed": changes})
        (self.run_dir / IDENTITY).write_text(json.dumps(identity, indent=1))

    def save_config(self, cfg: Config) -> None:
        save_config(cfg, self.run_dir / "config.yaml")

    def append_record(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self, completed_epochs: int, from_checkpoints: dict[int, dict] | None = None, log=print) -> list[dict]:
        """The records of epochs up to `completed_epochs`, one per epoch, rewritten to metrics.jsonl:
        later ones are dropped (a resumed run redoes them), a line cut short by a crash is dropped, and an
        epoch whose line never got written is taken from its checkpoint's manifest."""
        path = self.run_dir / "metrics.jsonl"
        readable, bad = read_records(path)
        records = {int(r["epoch"]): r for r in readable}
        restored = [e for e in (from_checkpoints or {}) if e not in records and e <= completed_epochs]
        for epoch in restored:
            records[epoch] = from_checkpoints[epoch]
        kept = [records[e] for e in sorted(records) if e <= completed_epochs]
        if bad or restored:
            log(f"metrics.jsonl repaired: {bad} unreadable line(s) dropped, epoch(s) "
                f"{', '.join(map(str, restored)) or 'none'} restored from checkpoints")
        if path.is_file() or kept:
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))


def read_records(path: Path) -> tuple[list[dict], int]:
    """A metrics.jsonl's epoch records in file order, and how many lines are not one (cut short by a
    crash, or damaged; blank lines count as neither). Reads only: `RunStorage.history` repairs."""
    records, bad = [], 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
            int(record["epoch"])
            records.append(record)
        except (ValueError, KeyError, TypeError):
            bad += line.strip() != ""
    return records, bad


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run folder was made with, with `overrides` (e.g. a moved data.path) on top."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []))


def resume_config(run_dir: str | Path, overrides: list[str], allow_change: bool) -> tuple[Config, dict]:
    """The run's config with `overrides`; a change to what the run learns from or how (data, model,
    optimizer, seed) is refused unless `allow_change`, and then returned to be recorded."""
    saved, cfg = run_config(run_dir).to_dict(), run_config(run_dir, overrides)
    changes = {key: {"was": old, "now": new} for key, old, new in differences(saved, cfg.to_dict())
               if not key.startswith(SAFE_ON_RESUME)}
    if changes and not allow_change:
        key, change = next(iter(changes.items()))
        raise ConfigError(f"--resume would change {key} from {change['was']!r} to {change['now']!r}"
                          f"{f' (and {len(changes) - 1} more)' if len(changes) > 1 else ''}: add --allow-change "
                          f"to train on with it (recorded in config.yaml and run.json), or start a new run")
    return cfg, changes


def differences(a: dict, b: dict, prefix: str = ""):
    """(dotted key, a's value, b's value) wherever two nested config dicts differ."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from differences(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}", x, y


def open_run(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Config, RunStorage]:
    cfg = run_config(run_dir, overrides)
    return cfg, RunStorage(run_dir, cfg.checkpoint.uri)
