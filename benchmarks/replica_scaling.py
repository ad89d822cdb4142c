"""Block replicas, SIMULATED scaling: every block's device step replaced by a fixed sleep.

    python -m benchmarks.replica_scaling                       # N = 2 4, R = 1 2 4, 20 ms a step
    python -m benchmarks.replica_scaling --step-ms 20 --out benchmarks/results/replica_scaling-simulated.json

On a machine without one device per actor, real compute says nothing about data parallelism: R x N
actors would share the same cores. So each actor sleeps K x step-ms per chunk of K steps
(RAY_AL_SLOW_BLOCK="*:seconds", ray_al/pipeline/slow_block.py) on a model so small its real compute is
noise, and the figures measure what ray_al adds: the driver's streams of calls, the object store hops,
the micro-batch split and one gloo all-reduce per step and block. A sleeping actor keeps no core busy, so
16 of them fit on 2 cores. The ideal is one block's rate: R x B samples every step-ms. Efficiency below 1
is orchestration and all-reduce time that a device would have spent idle.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import ray
import torch

from ray_al.config import config_from_dict
from ray_al.core.batches import epoch_chunks, step_batch_size
from ray_al.data.datasets import load_dataset
from ray_al.run.factory import make_trainer


def make_cfg(n: int, r: int, batch: int, chunk: int, steps: int):
    return config_from_dict({
        "data": {"source": "synthetic", "synthetic_shape": [1, 4, 4], "synthetic_size": steps * batch * r,
                 "batch_size": batch},
        "model": {"name": "mlp", "depth": n, "d": 16},
        "train": {"trainer": "al", "epochs": 2, "chunk_size": chunk, "threads": 1, "log_every_s": 0,
                  "max_inflight_chunks": 2 * n + 2},
        "ray": {"num_cpus_per_block": 0.1, "replicas_per_block": r},
        "checkpoint": {"enabled": False},
    })


def timed_epoch(trainer, cfg, data, epoch: int) -> float:
    chunks = list(epoch_chunks(data.train_x, data.train_y, step_batch_size(cfg), cfg.train.chunk_size, epoch, 0))
    start = time.perf_counter()
    trainer.train_epoch(iter(chunks), lambda stats: None)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--step-ms", type=float, default=20.0, help="the simulated device step, per mini-batch")
    p.add_argument("--steps", type=int, default=96, help="steps per timed epoch")
    p.add_argument("--batch", type=int, default=32, help="B, per replica")
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()

    os.environ["RAY_AL_SLOW_BLOCK"] = f"*:{args.chunk * args.step_ms / 1000}"  # inherited by every actor
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    torch.set_num_threads(1)
    print(f"SIMULATED: each step sleeps {args.step_ms:g} ms in every actor (chunks of {args.chunk}); "
          f"B={args.batch} per replica; {args.steps} steps per timed epoch after one warm-up epoch; "
          f"{os.cpu_count()} cores")
    rows = []
    for n in args.blocks:
        for r in args.replicas:
            cfg = make_cfg(n, r, args.batch, args.chunk, args.steps)
            data = load_dataset(cfg.data)
            pipe = make_trainer(cfg, data.input_shape, data.num_classes, 10 ** 6)
            try:
                timed_epoch(pipe, cfg, data, 0)
                seconds = timed_epoch(pipe, cfg, data, 1)
            finally:
                pipe.close()
            rate, ideal = args.steps * r * args.batch / seconds, r * args.batch / (args.step_ms / 1000)
            rows.append({"blocks": n, "replicas": r, "actors": n * r, "samples_per_s": round(rate),
                         "ideal_samples_per_s": round(ideal), "efficiency": round(rate / ideal, 3)})
            print(f"N={n} R={r} ({n * r} actors): {rate:,.0f} samples/s, ideal {ideal:,.0f} "
                  f"(R x B / step), efficiency {rate / ideal:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"simulated": True, "step_ms": args.step_ms, "batch_per_replica": args.batch,
                       "chunk": args.chunk, "steps": args.steps, "rows": rows}, f, indent=1)
    ray.shutdown()


if __name__ == "__main__":
    main()
