"""Vanishing gradients: a deep sigmoid MLP trained by AL and by its BP twin at the same budget.

    python benchmarks/sigmoid_depth.py --data /path/to/mnist [--depth 8] [--epochs 5] [--limit-train N]
    python benchmarks/sigmoid_depth.py            # the embedded 8x8 digits, when no data is at hand

Prints each method's test accuracy after every epoch (the two curves) and the final gap.
AL's blocks each learn from local losses two layers deep; BP must push the gradient through
every sigmoid of the prediction path (2 * depth layers).
"""
import argparse
import sys
import tempfile
from pathlib import Path

from ray_al.config import load_config
from ray_al.data import load_dataset
from ray_al.run import train

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None, help="folder of MNIST train-*.parquet / test-*.parquet (default: digits)")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench-sigmoid-")
    curves, data = {}, None
    for kind in ("al", "bp"):
        overrides = [f"model.depth={args.depth}", f"train.epochs={args.epochs}", f"optim.lr={args.lr}",
                     f"run_dir={run_dir}", f"name=sigmoid{args.depth}_{kind}", f"train.threads={args.threads}",
                     "train.log_every_s=120"]
        overrides += [f"data.path={args.data}"] if args.data else ["data.source=digits", "data.path=null"]
        overrides += [f"data.limit_train={args.limit_train}"] if args.limit_train else []
        overrides += [f"data.limit_test={args.limit_test}"] if args.limit_test else []
        cfg = load_config(ROOT / "configs" / "sigmoid" / f"mnist_mlp8_sigmoid_{kind}.yaml", overrides)
        data = data or load_dataset(cfg.data)
        result = train(cfg, data=data, log=lambda line: print(f"[{kind}] {line}", flush=True))
        curves[kind] = [r["test_acc"] for r in result.history]
    print(f"sigmoid MLP depth={args.depth} d={cfg.model.d} lr={args.lr} data={data.name} "
          f"train_samples={len(data.train_x)} test_samples={len(data.test_x)} epochs={args.epochs}")
    for kind, curve in curves.items():
        print(f"  {kind.upper()} test_acc by epoch: " + " ".join(f"{a:.4f}" for a in curve))
    print(f"  AL - BP after {args.epochs} epochs: {curves['al'][-1] - curves['bp'][-1]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
