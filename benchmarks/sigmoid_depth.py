"""Vanishing gradients: a deep sigmoid MLP trained by AL and by its BP twin at the same budget.

Our experiment, not one of the paper's: the paper argues that AL's local objectives keep gradients from
vanishing in deep networks but reports no deep-sigmoid run; this measures it.

    python -m benchmarks.sigmoid_depth --data /path/to/mnist [--depth 8] [--epochs 5] [--out PREFIX]
    python -m benchmarks.sigmoid_depth            # the embedded 8x8 digits, when no data is at hand

Every epoch (and once before training): the test accuracy of each method and the gradient norm each
block's f receives, by depth (ray_al/analysis/grad_norms.py), averaged over --probe training samples: AL's local
gradient (of block i's bridge loss, two layers deep) against BP's backpropagated one (of the
cross-entropy, through every sigmoid above block i). BP's norms falling towards block 1 while AL's
stay of one order is the vanishing gradient, measured. With --out: PREFIX.json and PREFIX.png.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ray_al.analysis.features import sample_indices
from ray_al.analysis.grad_norms import gradient_norms
from ray_al.config import load_config
from ray_al.core.batches import batches_per_epoch
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import Hooks, train

ROOT = Path(__file__).resolve().parent.parent


def run(kind: str, args, data, log, run_dir: str) -> list[dict]:
    """Train one method through the run loop; one record per epoch (0: before training), each with the
    gradient norms measured at the epoch's end by the loop's hook."""
    overrides = [f"model.depth={args.depth}", f"optim.lr={args.lr}", f"train.threads={args.threads}",
                 f"train.epochs={args.epochs}", "checkpoint.enabled=false", "log.tensorboard=false",
                 f"run_dir={run_dir}"]
    overrides += [f"data.path={args.data}"] if args.data else ["data.source=digits", "data.path=null"]
    cfg = load_config(ROOT / "configs" / "sigmoid" / f"mnist_mlp8_sigmoid_{kind}.yaml", overrides)
    n_batches = batches_per_epoch(len(data.train_x), cfg.data.batch_size)
    idx = sample_indices(len(data.train_x), args.probe, seed=1)
    probe_x, probe_y = data.train_x[idx], data.train_y[idx]
    records = []

    def measure(trainer, step):
        epoch = step // n_batches
        acc = trainer.evaluate(data.test_x, data.test_y)["test_acc"]
        norms = gradient_norms(trainer.model, probe_x, probe_y, cfg.data.batch_size)
        records.append({"method": kind, "epoch": epoch, "test_acc": acc, "grad_norms": norms})
        log(f"epoch {epoch} test_acc={acc:.4f} grad norm by block (1..{len(norms)}): "
            + " ".join(f"{v:.2e}" for v in norms) + f"  block 1 / block {len(norms)}: {norms[0] / norms[-1]:.2e}")

    train(cfg, log=lambda line: None, data=data, hooks=Hooks(every_steps=n_batches, on_steps=measure))
    return records


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, kind in zip(axes, ("al", "bp")):
        for r in (r for r in records if r["method"] == kind):
            depths = range(1, len(r["grad_norms"]) + 1)
            ax.plot(depths, r["grad_norms"], marker="o", label=f"epoch {r['epoch']}")
        ax.set(yscale="log", xlabel="block (depth)", ylabel="gradient norm of f_i",
               title=f"{kind.upper()}: " + ("local gradient (bridge loss)" if kind == "al" else "backpropagated CE"))
        ax.legend(fontsize=7)
    for kind in ("al", "bp"):
        rs = [r for r in records if r["method"] == kind]
        axes[2].plot([r["epoch"] for r in rs], [r["test_acc"] for r in rs], marker="o", label=kind.upper())
    axes[2].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="folder of MNIST train-*.parquet / test-*.parquet (default: digits)")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--probe", type=int, default=512, help="training samples the gradient norms average over")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output prefix: PREFIX.json (every record) and PREFIX.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_overrides = [f"data.path={args.data}"] if args.data else ["data.source=digits", "data.path=null"]
    data_overrides += [f"data.limit_train={args.limit_train}"] if args.limit_train else []
    data_overrides += [f"data.limit_test={args.limit_test}"] if args.limit_test else []
    cfg = load_config(ROOT / "configs" / "sigmoid" / "mnist_mlp8_sigmoid_al.yaml", data_overrides)
    data = load_dataset(cfg.data)
    print(f"sigmoid MLP depth={args.depth} d={cfg.model.d} lr={args.lr} data={data.name} "
          f"train_samples={len(data.train_x)} test_samples={len(data.test_x)} epochs={args.epochs}", flush=True)
    records = []
    with tempfile.TemporaryDirectory() as runs:  # the run folders are scaffolding: the records are the result
        for kind in ("al", "bp"):
            records += run(kind, args, data, lambda line, k=kind: print(f"[{k}] {line}", flush=True), runs)
    final = {r["method"]: r for r in records if r["epoch"] == args.epochs}
    gap = final["al"]["test_acc"] - final["bp"]["test_acc"]
    print(f"  AL - BP test accuracy after {args.epochs} epochs: {gap:+.4f}")
    for kind in ("al", "bp"):
        first = [r["grad_norms"][0] / r["grad_norms"][-1] for r in records if r["method"] == kind]
        print(f"  {kind.upper()} block 1 / block {args.depth} gradient norm by epoch: "
              + " ".join(f"{v:.2e}" for v in first))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(records, indent=1))
        plot(records, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
