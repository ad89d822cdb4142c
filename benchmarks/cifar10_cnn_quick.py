"""CIFAR-10 CNN, AL and its BP twin, at the quick config's budget: test accuracies and the
class-distance ratio (inter / intra) of every layer of the prediction path, the last hidden
layer (dec2, the input of the classifier h_1) included.

    python -m benchmarks.cifar10_cnn_quick --data /path/to/cifar10 [--samples 1000] [overrides...]

Extra arguments are dotted config overrides for both runs (e.g. train.epochs=2 data.limit_train=6400).
"""
import argparse
import sys
import tempfile
from pathlib import Path

from ray_al.analysis.features import al_features, bp_features, class_distances, layer_names, sample_indices
from ray_al.analysis.report import load_model
from ray_al.config import load_config
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import train

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="folder of CIFAR-10 train-*.parquet / test-*.parquet")
    p.add_argument("--samples", type=int, default=1000, help="test samples for the class distances")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench-cifar10-cnn-")
    rows, data = {}, None
    for kind in ("al", "bp"):
        cfg = load_config(ROOT / "configs" / "quick" / f"cifar10_cnn_{kind}.yaml",
                          [f"data.path={args.data}", f"run_dir={run_dir}", f"name=cifar10_cnn_{kind}",
                           f"train.threads={args.threads}", "train.log_every_s=60", *args.overrides])
        data = data or load_dataset(cfg.data)
        result = train(cfg, data=data, log=lambda line: print(f"[{kind}] {line}", flush=True))
        model = load_model(result.run_dir, [])
        idx = sample_indices(len(data.test_x), args.samples)
        x, y = data.test_x[idx], data.test_y[idx]
        names = layer_names(4)
        feats = al_features(model, x, names) if kind == "al" else bp_features(model, x, names)
        rows[kind] = (result.final, {name: class_distances(f, y) for name, f in feats.items()}, cfg)
    print(f"cifar10 cnn quick: train_samples={len(data.train_x)} test_samples={len(data.test_x)} "
          f"epochs={cfg.train.epochs} distance_samples={min(args.samples, len(data.test_x))}")
    for kind, (final, dist, cfg) in rows.items():
        ratios = " ".join(f"{name}={d['ratio']:.3f}" for name, d in dist.items())
        print(f"  {kind.upper()} test_acc={final['test_acc']:.4f} last hidden (dec2) inter/intra="
              f"{dist['dec2']['inter']:.3f}/{dist['dec2']['intra']:.3f}={dist['dec2']['ratio']:.3f}")
        print(f"  {kind.upper()} inter/intra by layer: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
