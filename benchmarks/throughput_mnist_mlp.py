"""MNIST MLP throughput, one run, same batches, same total cores: sequential AL in one
process, the Ray pipeline at K = 1 and K = 16, the BP twin, each stage alone and the ideal.

    python -m benchmarks.throughput_mnist_mlp [--data DATASETS] [--batches 600]
"""
import argparse
import sys

from benchmarks.common import datasets_root
from ray_al.cli import main

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--batches", type=int, default=600)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    mnist = datasets_root(args.data) / "mnist"
    sys.exit(main(["bench", "configs/mnist_mlp.yaml", f"data.path={mnist}", "data.limit_test=10",
                   f"ray.num_cpus={args.cores}", "--batches", str(args.batches), "--cores", str(args.cores),
                   "--chunk-sizes", "1", "16", "64"]))
