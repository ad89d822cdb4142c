"""GPU throughput: MNIST MLP and CNN through Ray with every block on one GPU, against CPU and one process.

    python benchmarks/gpu_throughput.py --data PATH/TO/mnist --out OUT_DIR            # GPU machine, < 8 min
    python benchmarks/gpu_throughput.py --data PATH/TO/mnist --out OUT_DIR --quick    # any machine, ~1 min
                                                                  # (tiny runs, model.d=64: checks, not figures)

Rows per model (the paper's MNIST MLP, 2 blocks, and CNN, 4 blocks; batch 32, chunk 16):
  ray_gpu    the Ray pipeline, all blocks on GPU 0 (ray.num_gpus_per_block = 1/N, fractional)
  ray_cpu    the same pipeline on CPU (each block cores/N threads; fewer samples: it is slower)
  local_gpu  al_local: every block in turn in this process, on cuda
  bp_gpu     the BP twin (same prediction path, backprop) on cuda
samples/s counts training only (no evaluation), from the last epoch of each run (the first warms up).
Without CUDA (or with --quick and no GPU) the *_gpu rows run on the CPU, marked "cpu stand-in",
so the script is tested end to end anywhere. Writes OUT_DIR/gpu_throughput.json and .txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ray  # noqa: E402
import torch  # noqa: E402

from ray_al.config import config_from_dict  # noqa: E402
from ray_al.run import train  # noqa: E402

BLOCKS = {"mlp": 2, "cnn": 4}


def plan(quick: bool, cuda: bool, cores: int) -> list[dict]:
    """(model, row) -> samples, epochs, trainer, device and Ray resources."""
    full = {"mlp": (60000, 3), "cnn": (60000, 2)}            # GPU rows: whole MNIST, epochs
    cpu = {"mlp": (12800, 2), "cnn": (3200, 2)}              # CPU rows: a slice, it is ~10-100x slower
    if quick:
        full = cpu = {"mlp": (320, 2), "cnn": (160, 2)}
    rows = []
    for model, n in BLOCKS.items():
        gpu_share = round(1.0 / n, 4)
        per_block = cores // n if cores >= n else round(cores / n, 2)  # CPU rows: the cores split between blocks
        gpu = {"device": "cuda" if cuda else "cpu", "stand_in": not cuda, "threads": None if cuda else 1}
        rows += [
            {"model": model, "row": "ray_gpu", "trainer": "al", "samples": full[model][0], "epochs": full[model][1],
             "ray": {"num_gpus_per_block": gpu_share if cuda else 0.0,
                     "num_cpus_per_block": min(1.0, round(cores / n, 2))}, **gpu},
            {"model": model, "row": "ray_cpu", "trainer": "al", "samples": cpu[model][0], "epochs": cpu[model][1],
             "ray": {"num_gpus_per_block": 0.0, "num_cpus_per_block": per_block}, "device": "cpu",
             "threads": max(1, int(per_block)), "stand_in": False},
            {"model": model, "row": "local_gpu", "trainer": "al_local", "samples": full[model][0],
             "epochs": full[model][1], **gpu},
            {"model": model, "row": "bp_gpu", "trainer": "bp", "samples": full[model][0],
             "epochs": full[model][1], **gpu},
        ]
    return rows


def run_row(r: dict, data_path: str, run_dir: str, quick: bool) -> dict:
    cfg = config_from_dict({
        "data": {"source": "parquet", "path": data_path, "batch_size": 32, "limit_train": r["samples"],
                 "limit_test": 2000 if quick or r["device"] == "cpu" else None},
        "model": {"name": r["model"], "d": 64 if quick else None},  # quick: narrow targets, seconds on a CPU
        "optim": {"lr": 1e-4},
        "train": {"trainer": r["trainer"], "epochs": r["epochs"], "chunk_size": 16, "device": r["device"],
                  "threads": r.get("threads"), "log_every_s": 0},
        "ray": r.get("ray", {}),
        "checkpoint": {"enabled": False},
        "run_dir": run_dir, "name": f"{r['model']}-{r['row']}",
    })
    lines: list[str] = []
    start = time.perf_counter()
    result = train(cfg, log=lines.append)
    last = result.history[-1]
    placement = [line for line in lines if line.startswith("block ") or " blocks in this process" in line]
    return {**{k: v for k, v in r.items() if k != "ray"}, "ray_resources": r.get("ray"),
            "samples_per_s": last["samples_per_s"],
            "samples_per_s_by_epoch": [h["samples_per_s"] for h in result.history],
            "test_acc": last["test_acc"], "wall_s": time.perf_counter() - start, "placement": placement}


def table(results: list[dict]) -> list[str]:
    out = [f"{'model':5} {'row':10} {'device':14} {'samples':>8} {'ep':>2} {'samples/s':>10} {'vs ray_cpu':>10} "
           f"{'test_acc':>8} {'wall s':>7}"]
    for model in BLOCKS:
        rows = [r for r in results if r["model"] == model]
        base = next((r["samples_per_s"] for r in rows if r["row"] == "ray_cpu" and "samples_per_s" in r), None)
        for r in rows:
            device = r["device"] + (" (stand-in)" if r.get("stand_in") else "")
            if "samples_per_s" not in r:
                out.append(f"{model:5} {r['row']:10} {device:14} {'':>8} {'':>2} {r.get('skipped', 'failed'):>10}")
                continue
            ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
            out.append(f"{model:5} {r['row']:10} {device:14} {r['samples']:>8} {r['epochs']:>2} "
                       f"{r['samples_per_s']:>10,.0f} {ratio:>10} {r['test_acc']:>8.4f} {r['wall_s']:>7.1f}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MNIST Parquet folder (train-*.parquet, test-*.parquet)")
    p.add_argument("--out", required=True, help="folder for gpu_throughput.json and gpu_throughput.txt")
    p.add_argument("--quick", action="store_true", help="tiny runs (tests, CPU machines)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip rows that would start after this")
    p.add_argument("--models", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    args = p.parse_args()
    if not any(Path(args.data).glob("train-*.parquet")):
        print(f"gpu_throughput: no train-*.parquet in {args.data}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cores, num_gpus=1 if cuda else 0, include_dashboard=False,
             logging_level="WARNING")
    env = {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(), "cores": cores,
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "quick": args.quick}
    print(f"gpu_throughput: {env}", flush=True)
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as run_dir:
        for r in [r for r in plan(args.quick, cuda, cores) if r["model"] in args.models]:
            if time.perf_counter() - start > args.budget_s:
                results.append({**r, "skipped": "budget"})
                continue
            try:
                res = run_row(r, args.data, run_dir, args.quick)
            except Exception as e:  # one failed row must not lose the others
                res = {**r, "skipped": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            results.append(res)
            shown = f"{res['samples_per_s']:,.0f} samples/s" if "samples_per_s" in res else res.get("error")
            print(f"  {r['model']} {r['row']}: {shown}", flush=True)
            for line in res.get("placement", [])[:4]:
                print(f"    {line}", flush=True)
    lines = table(results)
    print("\n".join(lines))
    (out / "gpu_throughput.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
    (out / "gpu_throughput.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_throughput.json'} ({time.perf_counter() - start:.0f} s)")
    ray.shutdown()
    return 0 if all("samples_per_s" in r or r.get("skipped") == "budget" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
