"""Throughput, side by side in one run: in-process sequential AL, the Ray pipeline at several
chunk sizes, and the BP twin, on the same batches; plus each stage's time and the ideal
pipeline throughput 1 / max(stage time). `ray-al bench` and benchmarks/ call this.

Every rate counts the mini-batches a trainer really trained (its per-chunk stats), over as many
epochs as `batches` needs. Stage times are the seconds each block spent computing inside the
timed pipeline run itself (`compute_s` of every chunk: same processes, threads, warm-up and
batches as the pipeline), so the ideal bounds what that run could have made.

With ray.replicas_per_block = R > 1 the Ray rows are the replicated pipeline (R x N actors) and every
row trains batches of R x B (what one step of it trains): the in-process rows are al_local and BP with
batch R x B, the same arithmetic, so the rates compare like for like.
"""
from __future__ import annotations

import itertools
import time

from ray_al.config import Config, changed
from ray_al.core.batches import epoch_chunks, step_batch_size
from ray_al.data.datasets import Dataset


def _chunks(data: Dataset, cfg: Config, chunk_size: int, batches: int):
    """`batches` steps (of R x B samples) in chunks of `chunk_size`, epoch after epoch when one epoch has fewer."""
    every_epoch = (chunk for epoch in itertools.count() for chunk in
                   epoch_chunks(data.train_x, data.train_y, step_batch_size(cfg), chunk_size, epoch, cfg.train.seed))
    return itertools.islice(every_epoch, -(-batches // chunk_size))


class Tally:
    """What a timed run trained, from its per-chunk stats: steps, and each block's compute seconds."""

    def __init__(self):
        self.steps, self.compute_s = 0, {}

    def __call__(self, stats: list[dict]) -> None:
        self.steps += stats[-1]["steps"]
        for st in stats:
            self.compute_s[st["block"]] = self.compute_s.get(st["block"], 0.0) + st.get("compute_s", 0.0)


def measure(trainer, data: Dataset, cfg: Config, chunk_size: int, batches: int, warmup: int | None = None) -> dict:
    """samples/s of trainer.train_epoch over `batches` batches after a warm-up (default two chunks, at
    least 8 batches), each block's seconds per batch, and the ideal batch / max(stage time)."""
    warmup = warmup if warmup is not None else max(8, 2 * chunk_size)
    trainer.train_epoch(_chunks(data, cfg, chunk_size, warmup), lambda stats: None)
    tally, start = Tally(), time.perf_counter()
    trainer.train_epoch(_chunks(data, cfg, chunk_size, batches), tally)
    seconds = time.perf_counter() - start
    # a replicated block's compute_s is its slowest replica's (replicas.merge_stats), each on B of the R x B
    stage_s = [tally.compute_s[b] / tally.steps for b in sorted(tally.compute_s)]
    batch = step_batch_size(cfg)
    return {"samples_per_s": tally.steps * batch / seconds, "steps": tally.steps,
            "seconds": seconds, "stage_ms": [1000 * s for s in stage_s],
            "ideal_samples_per_s": batch / max(stage_s) if stage_s and max(stage_s) > 0 else None}


def _timed(trainer, data, cfg, chunk_size, batches, warmup=None) -> float:
    return measure(trainer, data, cfg, chunk_size, batches, warmup)["samples_per_s"]


def throughput(cfg: Config, data: Dataset, batches: int, chunk_sizes=(1, 16), cores: int = 2,
               log=print) -> dict:
    import torch

    from ray_al.models import block_count
    from ray_al.pipeline.driver import ALPipeline
    from ray_al.pipeline.replicas import ReplicatedPipeline
    from ray_al.pipeline.session import connect
    from ray_al.trainers.al_local import ALLocal
    from ray_al.trainers.bp import BPTrainer

    n, r = block_count(cfg.model, data.input_shape, data.num_classes), cfg.ray.replicas_per_block
    results: dict = {"blocks": n, "replicas_per_block": r, "batch": step_batch_size(cfg)}
    torch.set_num_threads(cores)
    one = changed(cfg, {"ray.replicas_per_block": 1, "data.batch_size": step_batch_size(cfg)})  # R x B in one process
    for name, cls in (("sequential_al", ALLocal), ("bp_twin", BPTrainer)):
        trainer = cls(one, data.input_shape, data.num_classes, total_steps=batches)
        results[name] = _timed(trainer, data, one, 16, batches)
        log(f"{name:>16}: {results[name]:9,.0f} samples/s ({cores} threads, one process)")
    connect(cfg.ray)
    runs = {}
    for k in chunk_sizes:
        k_cfg = changed(cfg, {"train.chunk_size": k, "train.threads": max(1, cores // (n * r))})
        pipe = (ReplicatedPipeline if r > 1 else ALPipeline)(k_cfg, data.input_shape, data.num_classes,
                                                             total_steps=batches)
        try:
            runs[k] = measure(pipe, data, k_cfg, k, batches)
        finally:
            pipe.close()
        results["actors"] = len(pipe.placement)  # the actors that really ran, one placement line each
        actors = f"{len(pipe.placement)} actors" + (f" = {n} blocks x {r} replicas" if r > 1 else "")
        results[f"ray_k{k}"], results[f"ray_k{k}_batches"] = runs[k]["samples_per_s"], runs[k]["steps"]
        log(f"{'ray K=' + str(k):>16}: {results[f'ray_k{k}']:9,.0f} samples/s "
            f"({actors} x {k_cfg.train.threads} thread; {runs[k]['steps']} batches of {results['batch']})")
    best = max(runs, key=lambda k: runs[k]["samples_per_s"])  # the ratio line quotes the best K, not the largest
    results["best_k"], results["stage_ms"] = best, runs[best]["stage_ms"]
    results["ideal_pipeline"] = runs[best]["ideal_samples_per_s"]
    log(f"{'stage time':>16}: " + ", ".join(f"block {i + 1} {ms:.2f} ms" for i, ms in enumerate(results["stage_ms"]))
        + f" per batch (computing inside the ray K={best} run)")
    log(f"{'ideal pipeline':>16}: {results['ideal_pipeline']:9,.0f} samples/s = batch / max(stage time)")
    results["ratio_ray_vs_sequential"] = results[f"ray_k{best}"] / results["sequential_al"]
    results["ratio_ray_vs_ideal"] = results[f"ray_k{best}"] / results["ideal_pipeline"]
    k1 = min(chunk_sizes)
    log(f"ratios: ray K={best} (best) / sequential AL = {results['ratio_ray_vs_sequential']:.2f}; "
        f"ray K={best} / ideal = {results['ratio_ray_vs_ideal']:.2f}; "
        f"ray K={k1} / sequential = {results[f'ray_k{k1}'] / results['sequential_al']:.2f}; "
        f"BP twin / sequential AL = {results['bp_twin'] / results['sequential_al']:.2f}")
    return results
