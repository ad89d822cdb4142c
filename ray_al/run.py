"""One training run, read top to bottom: chunks from a source, a trainer, epochs, evaluation,
checkpoints and records in the run folder; a lost block restarts the run from its newest checkpoint.

Everything the loop touches is named by what it does: `sources.py` (memory or Ray Data chunks),
`trainers/` (the Ray pipeline, the same blocks in one process, the BP twin), `storage.py` (the run
folder), `checkpoint/policy.py` (when to save, what to restore, whether to restart).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray_al.block_times import BlockTimes
from ray_al.checkpoint.files import supersede
from ray_al.checkpoint.policy import Checkpointer, Position, RestartPolicy, fingerprint
from ray_al.config import Config
from ray_al.data import Dataset
from ray_al.errors import BlockLost, CheckpointError, ConfigError, DataError
from ray_al.loggers import check_loggers, console, make_loggers
from ray_al.metrics import split_accuracies
from ray_al.models import parameter_counts
from ray_al.progress import Log, Progress, format_record
from ray_al.provenance import provenance
from ray_al.sources import ChunkSource, open_source
from ray_al.storage import RunStorage
from ray_al.target_path import warm_up
from ray_al.trainers import Trainer, make_trainer


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    warmup: dict = field(default_factory=dict)  # target-path warm-up: steps, seconds, separability after it
    trainer: Trainer | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def train(cfg: Config, log: Log = console, on_epoch: Callable[[dict], None] | None = None,
          data: Dataset | None = None, keep_trainer: bool = False, resume_dir: str | Path | None = None,
          resume_step: int | None = None, config_changes: dict | None = None) -> RunResult:
    """Train as configured; `on_epoch` receives each epoch's record (Ray Tune reports from it).
    `data`: a dataset already in memory. With `resume_dir`, continue that run from its newest usable
    checkpoint (or from step `resume_step`); `config_changes` (from storage.resume_config) are recorded.
    With `keep_trainer`, the caller gets the trainer and closes it. A failed start (unknown model, no GPU,
    a logger's missing package) leaves no run folder."""
    check_loggers(cfg)
    source = open_source(cfg, data)
    try:
        return _run(cfg, source, log, on_epoch, keep_trainer, resume_dir, resume_step, config_changes or {})
    finally:
        source.close()


def _run(cfg: Config, source: ChunkSource, log: Log, on_epoch, keep_trainer: bool, resume_dir, resume_step,
         config_changes: dict) -> RunResult:
    # -- the run folder and its checkpoints, checked before any actor starts --------------------
    n_batches = source.n_batches
    if n_batches == 0:
        raise DataError(f"{source.train_size} training samples do not fill one batch of {cfg.data.batch_size}")
    if resume_dir and not source.checkpoints:
        raise ConfigError("--resume needs the in-memory loader (data.loader=memory)")
    if resume_step is not None and not resume_dir:
        raise ConfigError("--step chooses the checkpoint of --resume RUN_DIR")
    storage = RunStorage.resume(resume_dir, cfg.checkpoint.uri) if resume_dir else RunStorage.create(cfg)
    trainer = None
    try:
        checkpoints = Checkpointer(cfg, storage.checkpoint_uri,
                                   fingerprint(cfg, source.input_shape, source.num_classes),
                                   enabled=source.checkpoints, run_id=storage.run_id, n_batches=n_batches, log=log)
        if resume_dir and checkpoints.exists():
            checkpoints.check(resume_step)  # a checkpoint of another model or trainer costs nothing
            if config_changes:
                storage.save_config(cfg)
                storage.record_change(config_changes)
                log(f"config changed on resume (recorded in config.yaml and run.json): {', '.join(config_changes)}")
        elif resume_dir and (storage.run_dir / "metrics.jsonl").is_file():
            raise CheckpointError(f"no complete checkpoint under {storage.checkpoint_uri}")
        elif not resume_dir:
            storage.save_config(cfg)
        log(source.description)
        counts = parameter_counts(cfg.model, source.input_shape, source.num_classes)
        log(f"model: {cfg.model.name} trainer={cfg.train.trainer} params: AL total {counts['al_total']:,}, "
            f"AL effective {counts['al_effective']:,}, BP twin {counts['bp']:,}"
            + (f", BP authors {counts['bp_authors']:,}" if "bp_authors" in counts else "")
            + (f"; BP baseline: {cfg.model.bp_baseline}" if cfg.train.trainer == "bp" else ""))
        if cfg.checkpoint.enabled and not source.checkpoints:
            log("checkpoints: off with data.loader=ray_data (use the in-memory loader to checkpoint and resume)")
        # -- the trainer, from a checkpoint or from step 0 ---------------------------------------
        trainer = make_trainer(cfg, source.input_shape, source.num_classes, cfg.train.epochs * n_batches)
        if not resume_dir:
            source.preprocess.save(storage.run_dir)  # what `ray-al predict` repeats on new inputs
    except BaseException:
        if not resume_dir:
            storage.discard()  # a start that failed leaves no run folder behind
        storage.close()
        raise
    restarts = RestartPolicy(cfg.checkpoint, checkpoints.enabled)
    result = RunResult(storage.run_dir, restarts=restarts.restarts)
    block_times = BlockTimes(log)  # each block's step time, once per run
    try:
        for line in trainer.describe():
            log(line)
        position = None  # None: from step 0, i.e. target-path warm-up, then the step-0 checkpoint
        if resume_dir and checkpoints.exists():
            position = checkpoints.restore(trainer, resume_step)
            if resume_step is not None:
                later = supersede(storage.checkpoint_uri, position.step)
                if later:
                    log(f"checkpoints after step {position.step} set aside (manifests renamed, files kept): "
                        f"steps {', '.join(map(str, later))}")
            log(f"resumed from checkpoint step {position.step} (epoch {position.epoch + 1}, batch {position.batch})")
        elif resume_dir:  # stopped before its first checkpoint (e.g. during warm-up): nothing saved to lose
            log("no checkpoint yet: starting this run from step 0")

        # -- epochs; a lost block rebuilds every block from the newest checkpoint and replays ------
        while True:
            # TensorBoard by default, MLflow and W&B when asked; a replay rewrites the steps after the checkpoint
            loggers = make_loggers(cfg, storage.run_dir, from_step=position.step if position else 0)
            try:
                if position is None:
                    result.warmup = _start(cfg, source, trainer, checkpoints, log)
                    position = Position()
                result.history = storage.history(position.epoch, checkpoints.records(), log)
                for epoch in range(position.epoch, cfg.train.epochs):
                    start_batch = position.batch if epoch == position.epoch else 0
                    record = _train_epoch(cfg, source, trainer, checkpoints, epoch, start_batch, log,
                                          storage.run_id, loggers, block_times)
                    storage.append_record(record)
                    loggers.log_epoch(record)
                    log(format_record(record))
                    result.history.append(record)
                    if on_epoch:
                        on_epoch(record)
                break
            except BlockLost as e:
                restarts.admit(e)
                log(f"block lost: {e}; restart {len(restarts.restarts) + 1}/{restarts.max_restarts}")
                trainer.restart()
                for line in trainer.describe():  # where the blocks went this time
                    log(line)
                if not checkpoints.exists():  # lost during warm-up, before the step-0 checkpoint
                    position = None
                    restarts.record(None, e)
                    log("rebuilt every block from its seed; warming up again")
                    continue
                position = checkpoints.restore(trainer)
                restarts.record(position.step, e)
                log(f"rebuilt every block from checkpoint step {position.step}; replaying from there")
            finally:
                loggers.close()

        storage.write_summary({"final": result.final, "run_dir": str(storage.run_dir), "run_id": storage.run_id,
                               "restarts": result.restarts, "loader": cfg.data.loader, "provenance": provenance(),
                               **({"warmup": result.warmup} if result.warmup else {})})
        log(f"run folder: {storage.run_dir}")
    except BaseException:
        trainer.close()
        raise
    finally:
        storage.close()
    if keep_trainer:
        result.trainer = trainer
    else:
        trainer.close()
    return result


def _start(cfg: Config, source: ChunkSource, trainer: Trainer, checkpoints: Checkpointer, log: Log) -> dict:
    """Step 0: target-path warm-up (when configured), then the step-0 checkpoint. A block lost after
    it restarts from there; one lost before it rebuilds every block from its seed and warms up again."""
    warmup = {}
    if cfg.model.target_warmup_steps and cfg.train.trainer != "bp":
        warmup = warm_up(trainer, cfg.model, source.num_classes, cfg.train.chunk_size, log)
    checkpoints.save(trainer, Position())
    return warmup


def _train_epoch(cfg: Config, source: ChunkSource, trainer: Trainer, checkpoints: Checkpointer, epoch: int,
                 start_batch: int, log: Log, run_id: str | None, loggers, block_times: BlockTimes) -> dict:
    """Train one epoch from `start_batch`, saving where checkpoints fall due; returns its record."""
    n_batches, k = source.n_batches, cfg.train.chunk_size
    progress = Progress(epoch + 1, cfg.train.epochs, n_batches - start_batch, cfg.data.batch_size, log,
                        cfg.train.log_every_s, loggers)
    chunks = source.chunks(epoch, start_batch)
    seconds = 0.0

    def on_chunk(stats: list[dict]) -> None:
        progress(stats)
        block_times(stats)

    for first, end in checkpoints.segments(epoch, start_batch, n_batches, k):
        begin = time.perf_counter()
        trainer.train_epoch(itertools.islice(chunks, -(-(end - first) // k)), on_chunk)
        seconds += time.perf_counter() - begin
        if end < n_batches:
            checkpoints.save(trainer, Position(epoch * n_batches + end, epoch, end))
    block_times.flush()  # an epoch shorter than the measured chunks
    done = n_batches - start_batch
    record = {"run_id": run_id, "epoch": epoch + 1, "epochs": cfg.train.epochs, "step": (epoch + 1) * n_batches,
              "train_time_s": seconds, "samples_per_s": done * cfg.data.batch_size / max(seconds, 1e-9),
              **progress.summary(), **trainer.evaluate(source.test_x, source.test_y)}
    if source.val_x is not None:  # data.val_fraction: the held-out part of the training split
        record.update(split_accuracies("val", trainer.evaluate(source.val_x, source.val_y)))
    if start_batch:  # resumed mid-epoch: time, rate and losses cover batches start_batch.. only
        record.update(partial=True, from_batch=start_batch)
    checkpoints.save(trainer, Position((epoch + 1) * n_batches, epoch + 1, 0), record)
    return record

