"""Pipeline scaling: the Ray pipeline with N = 2, 4, 8 balanced blocks against sequential AL in one process.

    python -m benchmarks.scaling                    # N = 2 4 8, all cores
    python -m benchmarks.scaling --blocks 2 4 --width 512 --steps 256

The model is `mlp` with model.depth=N and every stage d -> d (the input is d pixels), so the
blocks cost about the same. For each N it prints:
  stage ms     each block's time per chunk, measured alone in this process (1 thread)
  local        samples/s of al_local (all blocks in turn, one process, 1 thread and all cores)
  ray          samples/s of the Ray pipeline (one actor per block, 1 thread each), warm epoch
  speedup      ray / local (1 thread)
  ideal        sum(stage) / max(stage): a pipeline's bound when every block has its own core
  core bound   min(ideal, C): with C cores at most C blocks run at once
"""
from __future__ import annotations

import argparse
import json
import os
import time

import ray
import torch

from ray_al.config import config_from_dict
from ray_al.core.batches import epoch_chunks
from ray_al.data.datasets import load_dataset
from ray_al.pipeline.driver import ALPipeline
from ray_al.trainers.al_local import ALLocal


def make_cfg(n: int, width: int, samples: int, batch: int, chunk: int, threads: int, cpus_per_block: float):
    side = int(width ** 0.5)
    return config_from_dict({
        "data": {"source": "synthetic", "synthetic_shape": [1, side, side], "synthetic_size": samples,
                 "batch_size": batch, "normalize": True},
        "model": {"name": "mlp", "depth": n, "d": side * side},
        "optim": {"lr": 1e-4},
        "train": {"trainer": "al", "epochs": 2, "chunk_size": chunk, "threads": threads, "log_every_s": 0,
                  "max_inflight_chunks": max(4, 2 * n)},
        "ray": {"num_cpus_per_block": cpus_per_block},
        "checkpoint": {"enabled": False},
    })


def stage_times(cfg, data, chunks_per_epoch: int) -> list[float]:
    """Seconds per chunk of each block alone: feed block i the outputs of block i-1, time only block i."""
    torch.set_num_threads(1)
    local = ALLocal(cfg, data.input_shape, data.num_classes, 10 ** 6)
    totals = [0.0] * local.n
    for epoch in range(2):  # epoch 0 warms up
        for chunk in epoch_chunks(data.train_x, data.train_y, cfg.data.batch_size, cfg.train.chunk_size, epoch, 0):
            inputs = (chunk.x, chunk.y)
            for i, trainer in enumerate(local.trainers):
                start = time.perf_counter()
                s, t, _ = trainer.train_chunk(*inputs)
                if epoch:
                    totals[i] += time.perf_counter() - start
                inputs = (s, t)
    return [t / chunks_per_epoch for t in totals]


def timed_epoch(trainer, cfg, data, epoch: int) -> float:
    chunks = list(epoch_chunks(data.train_x, data.train_y, cfg.data.batch_size, cfg.train.chunk_size, epoch, 0))
    start = time.perf_counter()
    trainer.train_epoch(iter(chunks), lambda stats: None)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--width", type=int, default=256, help="d, and the input's pixel count (a square)")
    p.add_argument("--steps", type=int, default=192, help="batches per timed epoch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    print(f"cores: {args.cpus}; mlp depth N, width {args.width}, batch {args.batch}, chunk {args.chunk}, "
          f"{args.steps} steps per timed epoch (after one warm-up epoch)")
    rows = []
    for n in args.blocks:
        samples = args.steps * args.batch
        per_block = min(1.0, args.cpus / n)
        cfg = make_cfg(n, args.width, samples, args.batch, args.chunk, 1, per_block)
        data = load_dataset(cfg.data)
        chunks = -(-args.steps // args.chunk)
        stages = stage_times(cfg, data, chunks)
        rates = {}
        for threads in (1, args.cpus):
            torch.set_num_threads(threads)
            local = ALLocal(cfg, data.input_shape, data.num_classes, 10 ** 6)
            timed_epoch(local, cfg, data, 0)
            rates[f"local_{threads}t"] = samples / timed_epoch(local, cfg, data, 1)
        torch.set_num_threads(1)
        pipe = ALPipeline(cfg, data.input_shape, data.num_classes, 10 ** 6)
        try:
            timed_epoch(pipe, cfg, data, 0)
            rates["ray"] = samples / timed_epoch(pipe, cfg, data, 1)
        finally:
            pipe.close()
        ideal = sum(stages) / max(stages)
        row = {"blocks": n, "stage_ms": [round(1000 * s, 2) for s in stages], **{k: round(v) for k, v in rates.items()},
               "speedup": rates["ray"] / rates["local_1t"], "ideal": ideal,
               "core_bound": min(ideal, float(args.cpus))}
        rows.append(row)
        print(f"N={n}: stage ms/chunk {row['stage_ms']}; local {row['local_1t']:,} samples/s (1 thread), "
              f"{row[f'local_{args.cpus}t']:,} ({args.cpus} threads); ray {row['ray']:,} samples/s; "
              f"speedup {row['speedup']:.2f}x (ideal 1/max stage {ideal:.2f}x, with {args.cpus} cores "
              f"{row['core_bound']:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    ray.shutdown()


if __name__ == "__main__":
    main()
