"""Throughput at CIFAR-10 shapes, one table, one run, one device: the BP twin, al_local, the Ray pipeline
over the object store and over Ray Direct Transport, each step option on both sides; and the per-chunk
transfer time of every transport.

    python -m benchmarks.gpu_throughput --out OUT_DIR                 # a GPU machine: every block on GPU 0
    python -m benchmarks.gpu_throughput --out OUT_DIR --quick         # any machine, a minute: checks, not figures

Models: mlp, cnn (4 blocks), vgg, resnet20, on 3x32x32 inputs, 10 classes, batch 32, chunk K = 16
(synthetic images: a step's cost does not depend on the pixels). Rows per model:
  bp           the BP twin in this process                    al_local   every block in turn in this process
  ray_os       Ray pipeline, ray.tensor_transport=object_store  ray_rdt    the same over RDT (GPU: auto, i.e.
                                                                            cuda_ipc on one GPU; CPU: gloo)
  bp+X, ray_rdt+X  with step option X (compile, cuda_graphs, bf16, channels_last, fused/foreach Adam,
               pin_memory; the ones the device supports), and +all: every one of them together
Columns: samples/s (training only, after a warm-up of two chunks), x BP (against the BP row with the same
options), peak GPU memory (MiB; Ray rows: the sum over the block processes), ideal = batch / max(stage
time), each stage's time being the seconds its block computed inside that same run, and ray / ideal.
Transfer: (s_1, t_1) of one chunk at K = 16 from block 1's actor to block 2's, per transport, against
the slower block's compute time per chunk. On a GPU machine Ray gets GPU 0, blocks 1/N of it each.
Writes OUT_DIR/gpu_throughput.json and .txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import ray
import torch

from ray_al.analysis.bench import measure
from ray_al.config import config_from_dict
from ray_al.data.datasets import load_dataset
from ray_al.models import block_count

MODELS = ["mlp", "cnn", "vgg", "resnet20"]
K, BATCH = 16, 32


def options_for(cuda: bool, model: str) -> dict[str, dict]:
    """Each step option the device supports, as train.* overrides; channels_last only for conv models."""
    opts = {"compile": {"compile": "on"}, "bf16": {"precision": "bf16"},
            "adam": {"adam": "fused" if cuda else "foreach"}}
    if model != "mlp":
        opts["channels_last"] = {"channels_last": True}
    if cuda:
        opts["cuda_graphs"] = {"compile": "cuda_graphs"}
        opts["pin_memory"] = {"pin_memory": True}
    every = {k: v for name, o in opts.items() if name != "compile" for k, v in o.items()}  # cuda_graphs > compile
    return {**opts, "all": every}


def plan(models: list[str], option_models: list[str], options: list[str] | None, cuda: bool) -> list[dict]:
    """Rows in the order they run: the four baselines of every model, then +all, then each option alone,
    so that a budget cut drops the least important rows."""
    rows = [{"model": m, "row": r, "options": {}} for m in models for r in ("bp", "al_local", "ray_os", "ray_rdt")]
    for m in models:
        every = options_for(cuda, m)["all"]
        rows += [{"model": m, "row": f"{side}+all", "options": every} for side in ("bp", "ray_rdt")]
    for m in option_models:
        for name, opt in options_for(cuda, m).items():
            if name != "all" and (options is None or name in options):
                rows += [{"model": m, "row": f"{side}+{name}", "options": opt} for side in ("bp", "ray_rdt")]
    return rows


def make_config(model: str, row: dict, cuda: bool, quick: bool, threads: int, cores: int, n: int):
    base = row["row"].split("+")[0]
    trainer = {"bp": "bp", "al_local": "al_local"}.get(base, "al")
    transport = {"ray_os": "object_store", "ray_rdt": "auto" if cuda else "gloo"}.get(base, "auto")
    return config_from_dict({
        "data": {"source": "synthetic", "synthetic_shape": [3, 32, 32], "synthetic_classes": 10,
                 "synthetic_size": 512 if quick else 4096, "batch_size": BATCH},
        "model": {"name": model, "d": 32 if quick else None},
        "train": {"trainer": trainer, "chunk_size": K, "device": "cuda" if cuda else "cpu", "log_every_s": 0,
                  "threads": threads if trainer != "al" else max(1, threads // n), **row["options"]},
        "ray": {"tensor_transport": transport, "num_gpus_per_block": round(1 / n, 4) if cuda else 0.0,
                "num_cpus_per_block": min(1.0, round(cores / n, 2))},
        "checkpoint": {"enabled": False}})


def run_row(row: dict, cuda: bool, quick: bool, batches: int, threads: int, cores: int) -> dict:
    from ray_al.run.factory import make_trainer

    n = block_count(config_from_dict({"model": {"name": row["model"]}}).model, (3, 32, 32), 10)
    cfg = make_config(row["model"], row, cuda, quick, threads, cores, n)
    data = load_dataset(cfg.data)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.set_num_threads(threads)
    trainer = make_trainer(cfg, data.input_shape, data.num_classes, total_steps=10 * batches)
    try:
        m = measure(trainer, data, cfg, K, batches)
        memory = (sum(trainer.peak_memory()) if cfg.train.trainer == "al" else
                  torch.cuda.max_memory_allocated() if cuda else 0)
        return {**row, **m, "peak_mib": memory / 2 ** 20, "placement": trainer.describe()}
    finally:
        trainer.close()


# -- transfer: one chunk's (s_1, t_1) from block 1's actor to block 2's ------------------------------
@ray.remote(enable_tensor_transport=True)
class Hop:
    def __init__(self, shapes: list, dtype: str, cuda: bool):
        device = "cuda:0" if cuda else "cpu"
        self.payload = tuple(torch.randn(s, device=device).to(getattr(torch, dtype)) for s in shapes)

    def produce(self):
        return tuple(t.clone() for t in self.payload)  # a fresh tensor per chunk, as a block's step makes

    def consume(self, tensors) -> float:
        return float(tensors[0].flatten()[0])  # touches the data: the hop really happened

    def ready(self) -> bool:
        return True


def hop_ms(shapes: list, cuda: bool, transports: list[str], chunks: int) -> dict[str, float]:
    """Milliseconds per chunk of produce -> consume, streamed as the pipeline streams (4 in flight)."""
    from ray.experimental.collective import create_collective_group, destroy_collective_group

    out = {}
    for transport in transports:
        opts = {"num_gpus": 0.5, "num_cpus": 0} if cuda else {"num_cpus": 0}
        a, b = (Hop.options(**opts).remote(shapes, "float32", cuda) for _ in range(2))
        ray.get([a.ready.remote(), b.ready.remote()])
        group = create_collective_group([a, b], backend=transport) if transport in ("gloo", "nccl") else None
        try:
            rdt = None if transport == "object_store" else transport
            for timed in (False, True):  # the first pass warms up
                start, pending = time.perf_counter(), []
                for _ in range(chunks):
                    pending.append(b.consume.remote(a.produce.options(tensor_transport=rdt).remote()))
                    if len(pending) >= 4:
                        ray.get(pending.pop(0))
                ray.get(pending)
            out[transport] = 1000 * (time.perf_counter() - start) / chunks
        except Exception as e:  # a transport that does not work here is a finding, not a crash
            out[transport] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            if group is not None:
                destroy_collective_group(group)
            for actor in (a, b):
                ray.kill(actor)
    return out


def boundary_shapes(model: str, quick: bool) -> list:
    """Shapes of (s_1, t_1) for one chunk of K batches: what block 1 hands block 2."""
    from ray_al.models import build_al_block

    cfg = config_from_dict({"model": {"name": model, "d": 32 if quick else None}})
    block = build_al_block(cfg.model, (3, 32, 32), 10, 0, 0, "cpu")
    with torch.no_grad():
        s = block(torch.zeros(2, 3, 32, 32))
        t = block.encode_target(block.target_input(torch.zeros(2, dtype=torch.long)))
    return [[K, BATCH, *s.shape[1:]], [K, BATCH, *t.shape[1:]]]


# -- the table -----------------------------------------------------------------------------------
def table(results: list[dict], transfers: dict, device: str) -> list[str]:
    out = [f"throughput on {device}, batch {BATCH}, K = {K}",
           f"{'model':8} {'row':22} {'samples/s':>10} {'x BP':>6} {'peak MiB':>9} {'ideal':>9} {'/ideal':>7}"]
    for r in results:
        if "samples_per_s" not in r:
            out.append(f"{r['model']:8} {r['row']:22} {r.get('skipped', 'failed'):>10}  {r.get('error', '')}")
            continue
        side = r["row"].split("+")
        bp_row = "+".join(["bp", *side[1:]])
        bp = next((b["samples_per_s"] for b in results if b["model"] == r["model"] and b["row"] == bp_row
                   and "samples_per_s" in b), None)
        ideal = r["ideal_samples_per_s"] if r["row"].startswith("ray") else None
        sps = r["samples_per_s"]
        x_bp, vs_ideal = (f"{sps / bp:.2f}" if bp else "-"), (f"{sps / ideal:.2f}" if ideal else "-")
        out.append(f"{r['model']:8} {r['row']:22} {sps:>10,.0f} {x_bp:>6} {r['peak_mib']:>9,.0f} "
                   f"{(f'{ideal:,.0f}' if ideal else '-'):>9} {vs_ideal:>7}")
    out.append("transfer of one chunk's (s_1, t_1), block 1 -> block 2 (ms per chunk, produce -> consume):")
    for model, t in transfers.items():
        rdt = next((r for r in results if r["model"] == model and r["row"] == "ray_rdt" and "stage_ms" in r), None)
        step = max(rdt["stage_ms"][:2]) * K if rdt else None  # the slower of the two blocks, per chunk
        cells = [f"{name} {v:.2f}" + (f" ({100 * v / step:.0f}% of the slower block's chunk)" if step else "")
                 if isinstance(v, float) else f"{name} {v}" for name, v in t["ms"].items()]
        out.append(f"  {model:8} {t['mib']:.2f} MiB: " + "; ".join(cells))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_throughput.json and gpu_throughput.txt")
    p.add_argument("--quick", action="store_true", help="tiny runs (tests, CPU machines): checks, not figures")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--option-models", nargs="*", default=["mlp", "cnn"], choices=MODELS,
                   help="models that get a row per step option (every model gets +all)")
    p.add_argument("--options", nargs="*", default=None, help="step options to run alone (default: all)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per row (default 320; quick 32)")
    p.add_argument("--budget-s", type=float, default=300.0, help="rows that would start after this are skipped")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in this process, split between the blocks in Ray rows (default: all cores; "
                        "quick: 1)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    threads = args.threads or (1 if args.quick else cores)
    batches = args.batches or (32 if args.quick else 320)
    ray.init(address="local", num_cpus=cores, num_gpus=1 if cuda else 0, include_dashboard=False,
             logging_level="WARNING")
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({cores} cores)"
    env = {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(), "cores": cores,
           "device": device, "quick": args.quick, "batches": batches, "threads": threads}
    print(f"gpu_throughput: {env}", flush=True)
    start, results = time.perf_counter(), []
    for row in plan(args.models, [m for m in args.option_models if m in args.models], args.options, cuda):
        if time.perf_counter() - start > args.budget_s:
            results.append({**row, "skipped": "budget"})
            continue
        try:
            res = run_row(row, cuda, args.quick, batches, threads, cores)
        except Exception as e:  # one failed row must not lose the others
            res = {**row, "skipped": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        results.append(res)
        shown = f"{res['samples_per_s']:,.0f} samples/s" if "samples_per_s" in res else res.get("error")
        print(f"  {row['model']} {row['row']}: {shown}", flush=True)
        for line in res.get("placement", []):
            if line.startswith("tensor transport") or not row["row"].startswith("ray"):
                print(f"    {line}", flush=True)
    transports = ["object_store", "cuda_ipc"] if cuda else ["object_store", "gloo"]
    transfers = {}
    for model in args.models:
        shapes = boundary_shapes(model, args.quick)
        mib = sum(torch.Size(s).numel() for s in shapes) * 4 / 2 ** 20
        transfers[model] = {"shapes": shapes, "mib": mib, "ms": hop_ms(shapes, cuda, transports,
                                                                       8 if args.quick else 40)}
    lines = table(results, transfers, device)
    print("\n".join(lines))
    (out / "gpu_throughput.json").write_text(json.dumps({"env": env, "results": results, "transfers": transfers},
                                                        indent=1))
    (out / "gpu_throughput.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_throughput.json'} ({time.perf_counter() - start:.0f} s)")
    ray.shutdown()
    return 0 if all("samples_per_s" in r or r.get("skipped") == "budget" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
