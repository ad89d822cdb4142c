"""MNIST MLP after one epoch: AL through Ray actors and the BP twin, in the same run, side by side.

What it runs: configs/mnist_mlp.yaml and configs/mnist_mlp_bp.yaml as they are. They keep the paper's
batch 32, Adam 1e-4 and d, but not the rest of its settings: a constant lr (the paper's step schedule
spans 200 epochs), and for AL a target-path warm-up before the first data step
(model.target_warmup_steps=300 in those configs; the paper has none). configs/paper/ holds the
paper's settings exactly.

    python -m benchmarks.accuracy_mnist_mlp [--data DATASETS] [--epochs 1]
"""
import argparse

from benchmarks.common import datasets_root
from ray_al.config import load_config
from ray_al.run.loop import train

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--run-dir", default="runs/bench")
    args = p.parse_args()
    mnist = datasets_root(args.data) / "mnist"
    finals = {}
    for name, config in (("AL (Ray, 2 block actors)", "configs/mnist_mlp.yaml"),
                         ("BP twin", "configs/mnist_mlp_bp.yaml")):
        cfg = load_config(config, [f"data.path={mnist}", f"train.epochs={args.epochs}", f"run_dir={args.run_dir}",
                                   "checkpoint.enabled=false"])
        print(f"== {name}: {config}")
        finals[name] = train(cfg).final
    print(f"\nMNIST MLP, {args.epochs} epoch(s), batch 32, Adam 1e-4, constant lr, AL with the config's target-path "
          "warm-up (same run):")
    for name, final in finals.items():
        exits = " ".join(f"{k}={v:.4f}" for k, v in final.items() if k.startswith("exit_"))
        print(f"  {name:<26} test_acc={final['test_acc']:.4f} {exits} ({final['samples_per_s']:,.0f} samples/s)")
    al, bp = finals["AL (Ray, 2 block actors)"]["test_acc"], finals["BP twin"]["test_acc"]
    print(f"  AL - BP = {al - bp:+.4f}; target AL >= 0.90: {'met' if al >= 0.90 else 'NOT met'}")
