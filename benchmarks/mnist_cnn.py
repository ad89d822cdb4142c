"""MNIST CNN: AL and its BP twin at the paper's settings (batch 32, Adam lr 1e-4), a few epochs.

    python -m benchmarks.mnist_cnn --data /path/to/mnist [--epochs 2] [--limit-train N] [--threads 1]

Prints each trainer's test accuracy, every AL exit, seconds per epoch and the AL - BP gap.
The lr is constant: the paper's schedule (x0.1 at 40% of the steps) is meant for 200 epochs.
AL runs with trainer=al_local (the same arithmetic as the Ray pipeline, bitwise, on CPU);
pass --al-trainer al to run it through Ray actors.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from ray_al.config import load_config
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import train

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="folder of MNIST train-*.parquet / test-*.parquet")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--al-trainer", default="al_local", choices=["al_local", "al"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--run-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench-mnist-cnn-")
    results = {}
    data = None
    for kind, trainer in (("al", args.al_trainer), ("bp", "bp")):
        overrides = [f"data.path={args.data}", f"train.epochs={args.epochs}", "optim.schedule=constant",
                     f"train.trainer={trainer}", f"run_dir={run_dir}", f"name=mnist_cnn_{kind}",
                     "train.log_every_s=60", f"train.threads={args.threads}"]
        if args.limit_train:
            overrides.append(f"data.limit_train={args.limit_train}")
        cfg = load_config(ROOT / "configs" / "paper" / f"mnist_cnn_{kind}.yaml", overrides)
        data = data or load_dataset(cfg.data)
        start = time.perf_counter()
        result = train(cfg, data=data, log=lambda line: print(f"[{kind}] {line}", flush=True))
        results[kind] = (result.final, time.perf_counter() - start)
    n = len(data.train_x)
    for kind, (final, seconds) in results.items():
        exits = " ".join(f"{final[k]:.4f}" for k in sorted(final) if k.startswith("exit_"))
        print(f"mnist cnn {kind}: test_acc={final['test_acc']:.4f} epochs={args.epochs} train_samples={n} "
              f"test_samples={len(data.test_x)} wall={seconds:.0f}s" + (f" exits=[{exits}]" if exits else ""))
    gap = results["al"][0]["test_acc"] - results["bp"][0]["test_acc"]
    met = "met" if results["al"][0]["test_acc"] >= 0.95 else "NOT met"
    print(f"mnist cnn AL - BP = {gap:+.4f} (target AL >= 0.95: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
