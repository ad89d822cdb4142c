"""How long `ray-al report` takes for one one-epoch run, at the default --samples and at the paper's.

    python -m benchmarks.report_time [--data DATASETS] [--out benchmarks/results/report_time-cpu.txt]

Trains configs/quick/mnist_mlp_al.yaml for one epoch (al_local), then times `ray-al report RUN` with the
default --samples (2000) and with --samples 10000 (the whole MNIST test split, as the paper), each in its
own process as a user runs it. Prints the seconds of each; the figures are this machine's, loaded or not.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, datasets_root


def timed(args: list[str]) -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ray_al", *args], check=True, cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - begin


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="folder with mnist/ (default: RAY_AL_DATASETS or ../shared/datasets)")
    p.add_argument("--out", default=None, help="also write the lines here")
    args = p.parse_args()
    mnist = datasets_root(args.data) / "mnist"
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        train = timed(["train", "configs/quick/mnist_mlp_al.yaml", f"data.path={mnist}", "train.epochs=1",
                       f"run_dir={tmp}", "name=one", "train.threads=1"])
        lines.append(f"train configs/quick/mnist_mlp_al.yaml, 1 epoch: {train:.0f} s")
        for samples in (None, 10000):
            extra = ["--samples", str(samples)] if samples else []
            seconds = timed(["report", f"{tmp}/one", "--out", f"{tmp}/report-{samples}", *extra])
            lines.append(f"report of that run, --samples {samples or '2000 (default)'}: {seconds:.0f} s")
    for line in lines:
        print(line)
    if args.out:
        Path(args.out).write_text("# python -m benchmarks.report_time\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
