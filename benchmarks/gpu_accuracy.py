"""On a GPU machine: blocks on CUDA through Ray (all on one GPU, fractional), checked against
the in-process reference on the same GPU, then longer accuracy runs (MNIST MLP and CNN, AL through
Ray and the BP twin, side by side).

What the accuracy runs use: configs/mnist_mlp.yaml and configs/mnist_cnn.yaml as they are. They keep
the paper's batch 32, Adam 1e-4 and d, but not the rest of its settings: a constant lr (the paper's
step schedule spans 200 epochs), and for AL a target-path warm-up before the first data step
(model.target_warmup_steps=300 in those configs; the paper has none). configs/paper/ holds the
paper's settings exactly. (benchmarks/results/gpu_accuracy_h100.json predates the warm-up in those
configs: it ran without one.)

    python -m benchmarks.gpu_accuracy --npz mnist.npz [--epochs 5] [--out DIR]

`--npz` holds uint8 train_x/test_x [n, 1, 28, 28] and train_y/test_y (a compact copy of the
Parquet shards, made with ray_al.data.datasets.load_parquet), or use --data DATASETS for Parquet.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch

from ray_al.config import DataConfig, load_config
from ray_al.data.datasets import Dataset, load_dataset
from ray_al.run.loop import train


def mnist(args) -> Dataset:
    if args.data:
        return load_dataset(DataConfig(source="parquet", path=str(Path(args.data) / "mnist")))
    z = np.load(args.npz)
    tr = torch.from_numpy(z["train_x"]).float().div_(255)
    te = torch.from_numpy(z["test_x"]).float().div_(255)
    mean, std = tr.mean(), tr.std()
    return Dataset((tr - mean) / std, torch.from_numpy(z["train_y"]), (te - mean) / std, torch.from_numpy(z["test_y"]),
                   10, "mnist")


GPU = ["ray.num_gpus_per_block=0.25", "train.device=cuda"]


def config(name, trainer, epochs, run_dir, extra=()):
    return load_config(f"configs/mnist_{name}.yaml", [f"train.trainer={trainer}", f"train.epochs={epochs}",
                                                       f"run_dir={run_dir}", "checkpoint.enabled=false",
                                                       "train.log_every_s=30", *GPU, *extra])


def equivalence(data, run_dir) -> dict:
    """Same config and seed: Ray actors on cuda vs one process on cuda, 300 steps."""
    small = Dataset(data.train_x[:9600], data.train_y[:9600], data.test_x[:2000], data.test_y[:2000], 10, "mnist")
    states = {}
    for trainer in ("al", "al_local"):
        cfg = config("mlp", trainer, 1, run_dir, ["train.chunk_size=16"])
        result = train(cfg, data=small, keep_trainer=True, log=lambda line: print("   ", line))
        states[trainer] = result.trainer.state_dicts()
        where = result.trainer.describe()
        result.trainer.close()
    diffs = [max((a.cpu() - b.cpu()).abs().max().item() for a, b in zip(sa["block"].values(), sb["block"].values())
                 if a.is_floating_point()) for sa, sb in zip(states["al"], states["al_local"])]
    return {"placement": where, "max_abs_param_diff_per_block": diffs,
            "bitwise_equal": all(d == 0 for d in diffs)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--npz")
    p.add_argument("--data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--cnn-epochs", type=int, default=2)
    p.add_argument("--out", default="runs/gpu")
    p.add_argument("--smoke", action="store_true", help="CPU, 3200 samples: checks the script itself")
    args = p.parse_args()
    if args.smoke:
        GPU[:] = ["train.device=cpu"]
    elif not torch.cuda.is_available():
        print("no CUDA device: this benchmark is for a GPU machine (--smoke runs it on the CPU)")
        return 1
    ray.init(address="local", num_gpus=0 if args.smoke else 1, include_dashboard=False, logging_level="WARNING")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = mnist(args)
    if args.smoke:
        data = Dataset(data.train_x[:3200], data.train_y[:3200], data.test_x[:500], data.test_y[:500], 10, "mnist")
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "ray": ray.__version__}
    print(f"== {report}")
    print("== equivalence: Ray actors on cuda vs one process on cuda (MNIST MLP, 300 steps, K=16)")
    report["equivalence"] = equivalence(data, out / "eq")
    print(json.dumps(report["equivalence"], indent=1))
    runs = [(m, t, e) for m, t, e in (("mlp", "bp", args.epochs), ("mlp", "al", args.epochs),
                                      ("cnn", "bp", args.cnn_epochs), ("cnn", "al", args.cnn_epochs)) if e > 0]
    for model, trainer, epochs in runs:
        print(f"== MNIST {model} {trainer} {epochs} epochs, batch 32, Adam 1e-4, constant lr, "
              f"configs/mnist_{model}.yaml (AL: with its target-path warm-up), on the GPU")
        start = time.time()
        cfg = config(model, trainer, epochs, out / "runs", ["train.chunk_size=16"])
        result = train(cfg, data=data, log=lambda line: print("   ", line))
        report[f"{model}_{trainer}"] = {"epochs": epochs, "test_acc_per_epoch": [r["test_acc"] for r in result.history],
                                        "exits_last": {k: v for k, v in result.final.items() if k.startswith("exit_")},
                                        "samples_per_s": [round(r["samples_per_s"]) for r in result.history],
                                        "wall_s": round(time.time() - start, 1)}
    print("== summary")
    for key in [f"{m}_{t}" for m, t, _ in runs]:
        r = report[key]
        print(f"  MNIST {key:<7} epochs={r['epochs']} test_acc={r['test_acc_per_epoch']} "
              f"samples/s={r['samples_per_s']} exits={r['exits_last']}")
    (out / "gpu_accuracy.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
