"""Throughput, side by side in one run: in-process sequential AL, the Ray pipeline at several
chunk sizes, and the BP twin, on the same batches; plus each stage's time and the ideal
pipeline throughput 1 / max(stage time). `ray-al bench` and benchmarks/ call this."""
from __future__ import annotations

import itertools
import time

import torch

from ray_al.batches import epoch_chunks
from ray_al.block_trainer import BlockTrainer
from ray_al.config import Config
from ray_al.data import Dataset
from ray_al.models import block_count, build_al_block


def _chunks(data: Dataset, cfg: Config, chunk_size: int, batches: int):
    chunks = epoch_chunks(data.train_x, data.train_y, cfg.data.batch_size, chunk_size, 0, cfg.train.seed)
    return itertools.islice(chunks, -(-batches // chunk_size))


def _timed(trainer, data, cfg, chunk_size, batches, warmup=8) -> float:
    """Samples/s of trainer.train_epoch over `batches` batches, after a short warm-up."""
    trainer.train_epoch(_chunks(data, cfg, chunk_size, warmup), lambda stats: None)
    start = time.perf_counter()
    trainer.train_epoch(_chunks(data, cfg, chunk_size, batches), lambda stats: None)
    return batches * cfg.data.batch_size / (time.perf_counter() - start)


def stage_times(cfg: Config, data: Dataset, batches: int, threads: int = 1) -> list[float]:
    """Seconds per batch of each block alone (forward, both losses, both optimizer steps)."""
    torch.set_num_threads(threads)
    n = block_count(cfg.model, data.input_shape, data.num_classes)
    trainers = [BlockTrainer(build_al_block(cfg.model, data.input_shape, data.num_classes, i, 0), cfg.optim, 1, i)
                for i in range(n)]
    chunk = next(_chunks(data, cfg, batches, batches))
    inputs, times = (chunk.x, chunk.y), []
    for trainer in trainers:
        trainer.train_chunk(inputs[0][:2], inputs[1][:2])  # warm-up
        start = time.perf_counter()
        s, t, _ = trainer.train_chunk(*inputs)
        times.append((time.perf_counter() - start) / len(chunk.x))
        inputs = (s, t)
    return times


def throughput(cfg: Config, data: Dataset, batches: int, chunk_sizes=(1, 16), cores: int = 2,
               log=print) -> dict:
    from ray_al.session import connect
    from ray_al.trainers.al_local import ALLocal
    from ray_al.trainers.bp import BPTrainer
    from ray_al.trainers.pipeline import ALPipeline

    results = {}
    stages = stage_times(cfg, data, min(batches, 64))
    n = len(stages)
    results["stage_ms"] = [1000 * t for t in stages]
    results["ideal_pipeline"] = cfg.data.batch_size / max(stages)
    torch.set_num_threads(cores)
    for name, cls in (("sequential_al", ALLocal), ("bp_twin", BPTrainer)):
        trainer = cls(cfg, data.input_shape, data.num_classes, total_steps=batches)
        results[name] = _timed(trainer, data, cfg, 16, batches)
        log(f"{name:>16}: {results[name]:9,.0f} samples/s ({cores} threads, one process)")
    connect(cfg.ray)
    for k in chunk_sizes:
        cfg.train.chunk_size = k
        cfg.train.threads = max(1, cores // n)
        pipe = ALPipeline(cfg, data.input_shape, data.num_classes, total_steps=batches)
        try:
            results[f"ray_k{k}"] = _timed(pipe, data, cfg, k, batches)
        finally:
            pipe.close()
        log(f"{'ray K=' + str(k):>16}: {results[f'ray_k{k}']:9,.0f} samples/s "
            f"({n} actors x {cfg.train.threads} thread)")
    log(f"{'stage time':>16}: " + ", ".join(f"block {i + 1} {ms:.2f} ms" for i, ms in enumerate(results["stage_ms"]))
        + " per batch (1 thread)")
    log(f"{'ideal pipeline':>16}: {results['ideal_pipeline']:9,.0f} samples/s = batch / max(stage time)")
    best = max(chunk_sizes)
    results["ratio_ray_vs_sequential"] = results[f"ray_k{best}"] / results["sequential_al"]
    results["ratio_ray_vs_ideal"] = results[f"ray_k{best}"] / results["ideal_pipeline"]
    log(f"ratios: ray K={best} / sequential AL = {results['ratio_ray_vs_sequential']:.2f}; "
        f"ray K={best} / ideal = {results['ratio_ray_vs_ideal']:.2f}; "
        f"ray K=1 / sequential = {results['ray_k1'] / results['sequential_al']:.2f}; "
        f"BP twin / sequential AL = {results['bp_twin'] / results['sequential_al']:.2f}")
    return results
