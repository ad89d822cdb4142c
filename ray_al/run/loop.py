"""One training run, read top to bottom: chunks from a source, a trainer, epochs, evaluation,
checkpoints and records in the run folder; a lost block restarts the run from its newest checkpoint.

`train` is four steps around one `Run`: open_run (folder, checkpoints, trainer: all checked before any
actor starts), start (from step 0 or a checkpoint), train_epochs (with recovery from lost blocks) and
finish. `Hooks` let a caller see records and evaluate between chunks without copying the loop.

Everything the loop touches is named by what it does: `sources.py` (memory or Ray Data chunks),
`trainers/` (the Ray pipeline, the same blocks in one process, the BP twin), `storage.py` (the run
folder), `checkpoint/policy.py` (when to save, what to restore, whether to restart).
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray_al.checkpoint.files import supersede
from ray_al.checkpoint.policy import Checkpointer, Position, RestartPolicy, fingerprint
from ray_al.checkpoint.provenance import provenance
from ray_al.config import Config, changed
from ray_al.core.batches import step_batch_size
from ray_al.core.metrics import split_accuracies
from ray_al.core.target_path import warm_up
from ray_al.data.datasets import Dataset
from ray_al.errors import BlockLost, CheckpointError, ConfigError, DataError
from ray_al.models import parameter_counts
from ray_al.run.block_times import BlockTimes
from ray_al.run.callbacks import Callback
from ray_al.run.factory import Trainer, make_trainer
from ray_al.run.loggers import check_loggers, console, make_loggers
from ray_al.run.memory import check_model_fits
from ray_al.run.progress import Log, Progress, format_record
from ray_al.run.sources import ChunkSource, open_source
from ray_al.run.storage import RunStorage


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    warmup: dict = field(default_factory=dict)  # target-path warm-up: steps, seconds, separability after it
    trainer: Trainer | None = None
    stopped_early: str = ""  # why a callback ended the run before train.epochs ('' when it ran them all)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class Hooks:
    """What a caller sees of a run as it trains. `on_epoch` gets each epoch's record (Ray Tune reports
    from it); `on_steps(trainer, step)` runs at step 0 (after warm-up, before training) and whenever another
    `every_steps` optimizer steps are done (at the end of the chunk that crosses the multiple), between
    chunks with the trainer idle: benchmarks evaluate there, and its time is not counted as training time."""
    on_epoch: Callable[[dict], None] | None = None
    every_steps: int = 0
    on_steps: Callable[[Trainer, int], None] | None = None
    callbacks: list[Callback] = field(default_factory=list)  # run/callbacks.py: on_epoch_end, stop_training


@dataclass
class Resume:
    """Continue the run in `run_dir` from its newest usable checkpoint (or from `step`); `config_changes`
    (from storage.resume_config) are recorded in the run folder."""
    run_dir: str | Path | None = None
    step: int | None = None
    config_changes: dict = field(default_factory=dict)


@dataclass
class Run:
    """Everything one run holds while it trains; the steps below (open, start, epochs, finish) share it."""
    cfg: Config
    source: ChunkSource
    log: Log
    hooks: Hooks
    resume: Resume
    storage: RunStorage
    checkpoints: Checkpointer
    trainer: Trainer
    restarts: RestartPolicy
    result: RunResult
    block_times: BlockTimes  # each block's step time, said once per run: where the pipeline waits


def train(cfg: Config, log: Log = console, on_epoch: Callable[[dict], None] | None = None,
          data: Dataset | None = None, keep_trainer: bool = False, resume_dir: str | Path | None = None,
          resume_step: int | None = None, config_changes: dict | None = None, hooks: Hooks | None = None) -> RunResult:
    """Train as configured. `data`: a dataset already in memory. With `resume_dir`, continue that run from
    its newest usable checkpoint (or from step `resume_step`). With `keep_trainer`, the caller gets the
    trainer and closes it. `on_epoch`, `hooks`: see Hooks. A failed start (unknown model, no GPU, a
    logger's missing package) leaves no run folder."""
    check_loggers(cfg)
    hooks = hooks or Hooks()
    if on_epoch:
        hooks = dataclasses.replace(hooks, on_epoch=on_epoch)
    source = open_source(cfg, data)
    try:
        cfg = changed(cfg, source.resolved) if source.resolved else cfg  # recorded in the run's config.yaml
        run = open_run(cfg, source, log, hooks, Resume(resume_dir, resume_step, config_changes or {}))
        try:
            train_epochs(run, start(run))
            finish(run)
        except KeyboardInterrupt:  # Ctrl-C, or `ray job stop` (SIGTERM, see pipeline/session.py)
            run.trainer.close()
            if run.checkpoints.exists():
                raise KeyboardInterrupt(f"resume with: ray-al train --resume {run.storage.run_dir}") from None
            raise
        except BaseException:
            run.trainer.close()
            raise
        finally:
            run.storage.close()
        if keep_trainer:
            run.result.trainer = run.trainer
        else:
            run.trainer.close()
        return run.result
    finally:
        source.close()


def open_run(cfg: Config, source: ChunkSource, log: Log, hooks: Hooks, resume: Resume) -> Run:
    """The run folder, its checkpoints and the trainer, checked before any actor starts."""
    n_batches = source.n_batches
    if n_batches == 0:
        raise DataError(f"{source.train_size} training samples do not fill one batch of {step_batch_size(cfg)}")
    if resume.run_dir and not source.checkpoints:
        raise ConfigError("--resume needs the in-memory loader (data.loader=memory)")
    if resume.step is not None and not resume.run_dir:
        raise ConfigError("--step chooses the checkpoint of --resume RUN_DIR")
    storage = RunStorage.resume(resume.run_dir, cfg.checkpoint.uri) if resume.run_dir else RunStorage.create(cfg)
    try:
        checkpoints = Checkpointer(cfg, storage.checkpoint_uri,
                                   fingerprint(cfg, source.input_shape, source.num_classes),
                                   enabled=source.checkpoints, run_id=storage.run_id, n_batches=n_batches, log=log,
                                   adopted=storage.owners())
        if resume.run_dir and checkpoints.exists():
            checkpoints.check(resume.step)  # a checkpoint of another model or trainer costs nothing
            if resume.config_changes:
                storage.save_config(cfg)
                storage.record_change(resume.config_changes)
                log(f"config changed on resume (recorded in config.yaml and run.json): "
                    f"{', '.join(resume.config_changes)}")
        elif resume.run_dir and (storage.run_dir / "metrics.jsonl").is_file():
            raise CheckpointError(f"no complete checkpoint under {storage.checkpoint_uri}")
        elif not resume.run_dir:
            storage.save_config(cfg)
        log(source.description)
        counts = parameter_counts(cfg.model, source.input_shape, source.num_classes)
        log(f"model: {cfg.model.name} trainer={cfg.train.trainer} params: AL total {counts['al_total']:,}, "
            f"AL effective {counts['al_effective']:,}, BP twin {counts['bp']:,}"
            + (f", BP authors {counts['bp_authors']:,}" if "bp_authors" in counts else "")
            + (f"; BP baseline: {cfg.model.bp_baseline}" if cfg.train.trainer == "bp" else ""))
        if cfg.checkpoint.enabled and not source.checkpoints:
            log("checkpoints: off with data.loader=ray_data (use the in-memory loader to checkpoint and resume)")
        check_model_fits(cfg, source.input_shape, source.num_classes)  # one line, not torch's "can't allocate"
        trainer = make_trainer(cfg, source.input_shape, source.num_classes, cfg.train.epochs * n_batches)
        if not resume.run_dir:
            source.preprocess.save(storage.run_dir)  # what `ray-al predict` repeats on new inputs
    except BaseException:
        if not resume.run_dir:
            storage.discard()  # a start that failed leaves no run folder behind
        storage.close()
        raise
    restarts = RestartPolicy(cfg.checkpoint, checkpoints.enabled)
    return Run(cfg, source, log, hooks, resume, storage, checkpoints, trainer, restarts,
               RunResult(storage.run_dir, restarts=restarts.restarts), BlockTimes(log))


def start(run: Run) -> Position | None:
    """Where training begins: a checkpoint's position when resuming, else None (step 0: warm-up first)."""
    for line in run.trainer.describe():
        run.log(line)
    if not run.resume.run_dir:
        return None
    if not run.checkpoints.exists():  # stopped before its first checkpoint (e.g. during warm-up): nothing to lose
        run.log("no checkpoint yet: starting this run from step 0")
        return None
    position = run.checkpoints.restore(run.trainer, run.resume.step)
    if run.resume.step is not None:
        later = supersede(run.storage.checkpoint_uri, position.step)
        if later:
            run.log(f"checkpoints after step {position.step} set aside (manifests renamed, files kept): "
                    f"steps {', '.join(map(str, later))}")
    run.log(f"resumed from checkpoint step {position.step} (epoch {position.epoch + 1}, batch {position.batch})")
    return position


def train_epochs(run: Run, position: Position | None) -> None:
    """Every epoch from `position`; a lost block rebuilds every block from the newest checkpoint and replays."""
    cfg, result = run.cfg, run.result
    while True:
        # TensorBoard by default, MLflow and W&B when asked; a replay rewrites the steps after the checkpoint
        loggers = make_loggers(cfg, run.storage.run_dir, from_step=position.step if position else 0)
        try:
            if position is None:
                result.warmup = _step_zero(run)
                position = Position()
            result.history = run.storage.history(position.epoch, run.checkpoints.records(), run.log)
            for epoch in range(position.epoch, cfg.train.epochs):
                start_batch = position.batch if epoch == position.epoch else 0
                record = _train_epoch(run, epoch, start_batch, loggers)
                run.storage.append_record(record)
                loggers.log_epoch(record)
                run.log(format_record(record))
                result.history.append(record)
                if run.hooks.on_epoch:
                    run.hooks.on_epoch(record)
                for callback in run.hooks.callbacks:
                    callback.on_epoch_end(record)
                stopping = [c.reason for c in run.hooks.callbacks if c.stop_training]
                if stopping and epoch + 1 < cfg.train.epochs:
                    result.stopped_early = "; ".join(stopping)
                    run.log(f"stopped after epoch {epoch + 1} of {cfg.train.epochs}: {result.stopped_early}")
                    return
            return
        except BlockLost as e:
            position = _recover(run, e)
        finally:
            loggers.close()


def finish(run: Run) -> None:
    result, storage = run.result, run.storage
    storage.write_summary({"final": result.final, "run_dir": str(storage.run_dir), "run_id": storage.run_id,
                           "restarts": result.restarts, "loader": run.cfg.data.loader, "provenance": provenance(),
                           **({"warmup": result.warmup} if result.warmup else {}),
                           **({"stopped_early": result.stopped_early} if result.stopped_early else {})})
    run.log(f"run folder: {storage.run_dir} ({_size(storage.run_dir)})")


def _on_a_terminal(run: Run) -> bool:
    """A progress bar when the run prints to a terminal through the console log; plain lines elsewhere."""
    return run.log is console and run.cfg.train.log_every_s > 0 and sys.stdout.isatty()


def _size(folder: Path) -> str:
    """What a run folder holds on disk (checkpoints under checkpoint.uri elsewhere are not counted)."""
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return f"{total / 2**20:,.1f} MiB" if total >= 2**20 else f"{total / 2**10:,.0f} KiB"


def _recover(run: Run, e: BlockLost) -> Position | None:
    """A lost block: rebuild every block, from the newest checkpoint (or from its seed before step 0)."""
    run.restarts.admit(e)
    run.log(f"block lost: {e}; restart {len(run.restarts.restarts) + 1}/{run.restarts.max_restarts}")
    run.trainer.restart()
    for line in run.trainer.describe():  # where the blocks went this time
        run.log(line)
    if not run.checkpoints.exists():  # lost during warm-up, before the step-0 checkpoint
        run.restarts.record(None, e)
        run.log("rebuilt every block from its seed; warming up again")
        return None
    position = run.checkpoints.restore(run.trainer)
    run.restarts.record(position.step, e)
    run.log(f"rebuilt every block from checkpoint step {position.step}; replaying from there")
    return position


def _step_zero(run: Run) -> dict:
    """Step 0: target-path warm-up (when configured), then the step-0 checkpoint. A block lost after
    it restarts from there; one lost before it rebuilds every block from its seed and warms up again."""
    cfg, warmup = run.cfg, {}
    if cfg.model.target_warmup_steps and cfg.train.trainer != "bp":
        warmup = warm_up(run.trainer, cfg.model, run.source.num_classes, cfg.train.chunk_size, run.log)
    run.checkpoints.save(run.trainer, Position())
    if run.hooks.on_steps:
        run.hooks.on_steps(run.trainer, 0)
    return warmup


def _segments(run: Run, epoch: int, start_batch: int) -> list[tuple[int, int, bool, bool]]:
    """The epoch's batches [start_batch, n) cut at whole chunks where a checkpoint falls due and where the
    hooks' `every_steps` falls due: (first, end, checkpoint_due, hook_due)."""
    n, k, every = run.source.n_batches, run.cfg.train.chunk_size, run.hooks.every_steps
    saves = {end for _, end in run.checkpoints.segments(epoch, start_batch, n, k) if end < n}
    cuts, first = [], start_batch
    for b in range(start_batch, n, k):
        end = min(b + k, n)
        hook = bool(every and run.hooks.on_steps and (epoch * n + end) // every > (epoch * n + b) // every)
        if end == n or end in saves or hook:
            cuts.append((first, end, end in saves, hook))
            first = end
    return cuts


def _train_epoch(run: Run, epoch: int, start_batch: int, loggers) -> dict:
    """Train one epoch from `start_batch`, saving where checkpoints fall due; returns its record."""
    cfg, source, trainer, hooks = run.cfg, run.source, run.trainer, run.hooks
    n_batches, k = source.n_batches, cfg.train.chunk_size
    progress = Progress(epoch + 1, cfg.train.epochs, n_batches - start_batch, step_batch_size(cfg), run.log,
                        cfg.train.log_every_s, loggers, bar=_on_a_terminal(run))
    chunks = source.chunks(epoch, start_batch)
    seconds = 0.0

    def on_chunk(stats: list[dict]) -> None:
        progress(stats)
        run.block_times(stats)

    try:
        for first, end, checkpoint_due, hook_due in _segments(run, epoch, start_batch):
            begin = time.perf_counter()
            trainer.train_epoch(itertools.islice(chunks, -(-(end - first) // k)), on_chunk)
            seconds += time.perf_counter() - begin
            if checkpoint_due:
                run.checkpoints.save(trainer, Position(epoch * n_batches + end, epoch, end))
            if hook_due:
                hooks.on_steps(trainer, epoch * n_batches + end)
        run.block_times.flush()  # an epoch shorter than the measured chunks
        done = n_batches - start_batch
        progress.evaluating(f"testing on {len(source.test_y):,} samples")
        record = {"run_id": run.storage.run_id, "epoch": epoch + 1, "epochs": cfg.train.epochs,
                  "step": (epoch + 1) * n_batches, "train_time_s": seconds,
                  "samples_per_s": done * step_batch_size(cfg) / max(seconds, 1e-9),
                  **progress.summary(), **trainer.evaluate(source.test_x, source.test_y)}
        if source.val_x is not None:  # data.val_fraction: the held-out part of the training split
            progress.evaluating(f"validating on {len(source.val_y):,} samples")
            record.update(split_accuracies("val", trainer.evaluate(source.val_x, source.val_y)))
    finally:
        progress.close()
    if start_batch:  # resumed mid-epoch: time, rate and losses cover batches start_batch.. only
        record.update(partial=True, from_batch=start_batch)
    run.checkpoints.save(trainer, Position((epoch + 1) * n_batches, epoch + 1, 0), record)
    return record
