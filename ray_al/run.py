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

from ray_al.checkpoint.policy import Checkpointer, Position, RestartPolicy, fingerprint
from ray_al.config import Config
from ray_al.data import Dataset
from ray_al.errors import BlockLost, ConfigError, DataError
from ray_al.metrics import split_accuracies
from ray_al.models import parameter_counts
from ray_al.progress import Log, Progress, format_record
from ray_al.sources import ChunkSource, open_source
from ray_al.storage import RunStorage
from ray_al.trainers import Trainer, make_trainer


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    trainer: Trainer | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def train(cfg: Config, log: Log = print, on_epoch: Callable[[dict], None] | None = None,
          data: Dataset | None = None, keep_trainer: bool = False, resume_dir: str | Path | None = None) -> RunResult:
    """Train as configured; `on_epoch` receives each epoch's record (Ray Tune reports from it).
    `data`: a dataset already in memory. With `resume_dir`, continue that run from its newest
    complete checkpoint. With `keep_trainer`, the caller gets the trainer and closes it."""
    source = open_source(cfg, data)
    try:
        return _run(cfg, source, log, on_epoch, keep_trainer, resume_dir)
    finally:
        source.close()


def _run(cfg: Config, source: ChunkSource, log: Log, on_epoch, keep_trainer: bool, resume_dir) -> RunResult:
    # -- the run folder and its checkpoints, checked before any actor starts --------------------
    n_batches = source.n_batches
    if n_batches == 0:
        raise DataError(f"{source.train_size} training samples do not fill one batch of {cfg.data.batch_size}")
    if resume_dir and not source.checkpoints:
        raise ConfigError("--resume needs the in-memory loader (data.loader=memory)")
    storage = RunStorage(resume_dir, cfg.checkpoint.uri) if resume_dir else RunStorage.create(cfg)
    checkpoints = Checkpointer(cfg, storage.checkpoint_uri, fingerprint(cfg, source.input_shape, source.num_classes),
                               enabled=source.checkpoints)
    if resume_dir:
        checkpoints.check()  # a checkpoint of another model or trainer costs nothing
    else:
        storage.save_config(cfg)
        source.preprocess.save(storage.run_dir)  # what `ray-al predict` repeats on new inputs
    log(source.description)
    counts = parameter_counts(cfg.model, source.input_shape, source.num_classes)
    log(f"model: {cfg.model.name} trainer={cfg.train.trainer} params: AL total {counts['al_total']:,}, "
        f"AL effective {counts['al_effective']:,}, BP twin {counts['bp']:,}")
    if cfg.checkpoint.enabled and not source.checkpoints:
        log("checkpoints: off with data.loader=ray_data (use the in-memory loader to checkpoint and resume)")

    # -- the trainer, from a checkpoint or from step 0 -------------------------------------------
    trainer = make_trainer(cfg, source.input_shape, source.num_classes, cfg.train.epochs * n_batches)
    restarts = RestartPolicy(cfg.checkpoint, checkpoints.enabled)
    result = RunResult(storage.run_dir, restarts=restarts.restarts)
    try:
        for line in trainer.describe():
            log(line)
        if resume_dir:
            position = checkpoints.restore(trainer)
            log(f"resumed from checkpoint step {position.step} (epoch {position.epoch + 1}, batch {position.batch})")
        else:
            position = Position()
            checkpoints.save(trainer, position)  # a block lost before the first save restarts from here

        # -- epochs; a lost block rebuilds every block from the newest checkpoint and replays ------
        while True:
            result.history = storage.history(completed_epochs=position.epoch)
            try:
                for epoch in range(position.epoch, cfg.train.epochs):
                    start_batch = position.batch if epoch == position.epoch else 0
                    record = _train_epoch(cfg, source, trainer, checkpoints, epoch, start_batch, log)
                    storage.append_record(record)
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
                position = checkpoints.restore(trainer)
                restarts.record(position.step, e)
                log(f"rebuilt every block from checkpoint step {position.step}; replaying from there")

        storage.write_summary({"final": result.final, "run_dir": str(storage.run_dir), "restarts": result.restarts,
                               "loader": cfg.data.loader})
        log(f"run folder: {storage.run_dir}")
    except BaseException:
        trainer.close()
        raise
    if keep_trainer:
        result.trainer = trainer
    else:
        trainer.close()
    return result


def _train_epoch(cfg: Config, source: ChunkSource, trainer: Trainer, checkpoints: Checkpointer, epoch: int,
                 start_batch: int, log: Log) -> dict:
    """Train one epoch from `start_batch`, saving where checkpoints fall due; returns its record."""
    n_batches, k = source.n_batches, cfg.train.chunk_size
    progress = Progress(epoch + 1, cfg.train.epochs, n_batches - start_batch, cfg.data.batch_size, log,
                        cfg.train.log_every_s)
    chunks = source.chunks(epoch, start_batch)
    seconds = 0.0
    for first, end in checkpoints.segments(epoch, start_batch, n_batches, k):
        begin = time.perf_counter()
        trainer.train_epoch(itertools.islice(chunks, -(-(end - first) // k)), progress)
        seconds += time.perf_counter() - begin
        if end < n_batches:
            checkpoints.save(trainer, Position(epoch * n_batches + end, epoch, end))
    done = n_batches - start_batch
    record = {"epoch": epoch + 1, "epochs": cfg.train.epochs, "step": (epoch + 1) * n_batches,
              "train_time_s": seconds, "samples_per_s": done * cfg.data.batch_size / max(seconds, 1e-9),
              **progress.summary(), **trainer.evaluate(source.test_x, source.test_y)}
    if source.val_x is not None:  # data.val_fraction: the held-out part of the training split
        record.update(split_accuracies("val", trainer.evaluate(source.val_x, source.val_y)))
    checkpoints.save(trainer, Position((epoch + 1) * n_batches, epoch + 1, 0))
    return record
