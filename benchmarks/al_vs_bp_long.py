"""AL against its BP twin at the largest budget this machine affords: full epochs, curves, --resume.

    python -m benchmarks.al_vs_bp_long --data DIR --out DIR --budget-minutes M [--resume]
    python -m benchmarks.al_vs_bp_long --quick --out DIR --budget-minutes 1     # digits, seconds (the test)

Cases: MNIST CNN, CIFAR-10 MLP, CIFAR-10 CNN on the full training sets (--limit-train to cut them).
Variants, on the same batches in the same order (ray_al/core/batches.py: the order is a function of
(seed, epoch)): `bp` (the BP twin), `al_paper` (AL as the paper trains it) and `al_warmup` (AL with
the best lever of benchmarks/time_to_accuracy.py: target-path warm-up). AL runs as `al_local`, the
blocks one after another in this process: the same arithmetic as the Ray pipeline
(tests/test_pipeline.py checks it bitwise), without Ray's processes on a small machine.

Work is cut into segments (1/--segments-per-epoch of an epoch). The next segment goes to the case
that has had the least wall time so far, and within it to the variant that has trained the fewest
segments, so every case gets epochs and the variants of a case stay at equal steps. After each
segment: the test accuracy of every exit, a checkpoint per variant (OUT/state/), OUT/curves.csv,
OUT/table.txt and OUT/curves.png. `--resume` continues from OUT/state/; the budget counts from
the (re)start. A segment that would overrun the budget (by the last one's duration) is not begun.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import datasets_root
from benchmarks.time_to_accuracy import case_config, parquet, warmup
from ray_al.analysis.paper import PAPER_EPOCHS
from ray_al.config import config_from_dict
from ray_al.core.batches import batches_per_epoch, epoch_chunks
from ray_al.core.target_path import warm_up
from ray_al.data.datasets import load_dataset
from ray_al.run.factory import make_trainer

# name -> (data, model); the CIFAR-10 MLP's d is --mlp-d (the paper's 3000 makes 5d = 15000-wide bridges)
CASES = {
    "mnist_cnn": (parquet("mnist", None, None), {"name": "cnn"}),
    "cifar10_mlp": (parquet("cifar10", None, None), {"name": "mlp"}),
    "cifar10_cnn": (parquet("cifar10", None, None), {"name": "cnn"}),
}
QUICK_CASES = {"digits_mlp": ({"source": "digits"}, {"name": "mlp", "d": 64})}
VARIANTS = ("bp", "al_paper", "al_warmup")


class Job:
    """One (case, variant): its trainer, where it is in the data, its curve and its seconds."""

    def __init__(self, case: str, variant: str, values: dict, data, state_dir: Path, segments: int):
        self.case, self.variant, self.data, self.segments = case, variant, data, segments
        self.cfg = config_from_dict(values)
        self.n_batches = batches_per_epoch(len(data.train_x), self.cfg.data.batch_size)
        torch.manual_seed(0)
        self.trainer = make_trainer(self.cfg, data.input_shape, data.num_classes, PAPER_EPOCHS * self.n_batches)
        self.path = state_dir / f"{case}-{variant}.pt"
        self.done, self.curve, self.seconds, self.wall, self.last_wall = 0, [], 0.0, 0.0, 0.0

    def start(self, resume: bool, log) -> None:
        if resume and self.path.exists():
            saved = torch.load(self.path, weights_only=False)
            self.trainer.load_state_dicts(saved["states"])
            self.done, self.curve = saved["done"], saved["curve"]
            self.seconds, self.wall, self.last_wall = saved["seconds"], saved["wall"], saved["last_wall"]
            log(f"resumed at epoch {self.done / self.segments:.2f}")
        elif self.cfg.model.target_warmup_steps:
            begin = time.perf_counter()
            self.seconds += warm_up(self.trainer, self.cfg.model, self.data.num_classes,
                                    self.cfg.train.chunk_size, log)["warmup_time_s"]
            self.wall += time.perf_counter() - begin

    def run_segment(self, log) -> None:
        """Train the next 1/segments of an epoch, evaluate, save."""
        begin = time.perf_counter()
        epoch, part = divmod(self.done, self.segments)
        cuts = [round(self.n_batches * i / self.segments) for i in range(self.segments + 1)]
        k = self.cfg.train.chunk_size
        chunks = epoch_chunks(self.data.train_x, self.data.train_y, self.cfg.data.batch_size, k, epoch,
                              self.cfg.train.seed, self.cfg.data.augment, start_batch=cuts[part])
        n_chunks = -(-(cuts[part + 1] - cuts[part]) // k)
        for chunk in itertools.islice(chunks, n_chunks):
            if chunk.x.shape[0] + chunk.first_step - epoch * self.n_batches > cuts[part + 1]:
                keep = cuts[part + 1] - (chunk.first_step - epoch * self.n_batches)
                chunk.x, chunk.y = chunk.x[:keep], chunk.y[:keep]
            self.trainer.train_epoch([chunk], lambda stats: None)
        self.seconds += time.perf_counter() - begin
        self.done += 1
        accs = self.trainer.evaluate(self.data.test_x, self.data.test_y)
        step = epoch * self.n_batches + cuts[part + 1]
        self.curve.append({"epoch": self.done / self.segments, "step": step, "seconds": self.seconds, **accs})
        exits = " ".join(f"{accs[key]:.4f}" for key in sorted(accs) if key.startswith("exit_"))
        log(f"epoch {self.done / self.segments:.2f} step {step} {self.seconds:.0f}s test_acc={accs['test_acc']:.4f}"
            + (f" exits=[{exits}]" if exits else ""))
        self.last_wall = time.perf_counter() - begin
        self.wall += self.last_wall
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"states": self.trainer.state_dicts(), "done": self.done, "curve": self.curve,
                    "seconds": self.seconds, "wall": self.wall, "last_wall": self.last_wall}, tmp)
        tmp.replace(self.path)  # a run killed mid-write keeps the previous checkpoint


def next_job(jobs: list[Job], deadline: float) -> Job | None:
    """The least-served case's least-advanced variant, if its next segment fits before the deadline."""
    left = deadline - time.perf_counter()
    fitting = [j for j in jobs if j.last_wall <= left]
    if not fitting:
        return None
    case_wall = {c: sum(j.wall for j in jobs if j.case == c) for c in dict.fromkeys(j.case for j in fitting)}
    case = min(case_wall, key=case_wall.get)
    return min((j for j in fitting if j.case == case), key=lambda j: (j.done, VARIANTS.index(j.variant)))


def at_step(job: Job, step: int) -> float | None:
    return next((p["test_acc"] for p in job.curve if p["step"] == step), None)


def table(jobs: list[Job]) -> str:
    """Per case and variant: epochs run, the last evaluation, the best one, and the gap to BP at equal steps."""
    lines = [f"{'case':<12} {'variant':<10} {'epochs':>6} {'steps':>7} {'final':>6} {'best':>6} "
             f"{'best exit':>9} {'equal-step':>10} {'acc':>6} {'-BP pts':>7} {'train s':>8}"]
    for case in dict.fromkeys(j.case for j in jobs):
        mine = [j for j in jobs if j.case == case]
        common = min((j.curve[-1]["step"] for j in mine), default=0) if all(j.curve for j in mine) else 0
        bp = next((at_step(j, common) for j in mine if j.variant == "bp"), None)
        for j in mine:
            if not j.curve:
                lines.append(f"{j.case:<12} {j.variant:<10} {0:>6.2f}  (no segment yet)")
                continue
            last = j.curve[-1]
            best_exit = max(v for k, v in last.items() if k.startswith("exit_") or k == "test_acc")
            acc = at_step(j, common)
            fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
            gap = 100 * (acc - bp) if acc is not None and bp is not None else None
            lines.append(f"{j.case:<12} {j.variant:<10} {last['epoch']:>6.2f} {last['step']:>7} "
                         f"{last['test_acc']:>6.4f} {max(p['test_acc'] for p in j.curve):>6.4f} {best_exit:>9.4f} "
                         f"{common:>10} {fmt(acc, '.4f'):>6} {fmt(gap, '+.2f'):>7} {j.seconds:>8.0f}")
    lines.append("final, best: last-exit test accuracy (the paper's prediction) at the last and the best evaluation; "
                 "best exit: the best exit at the last evaluation; equal-step: the most steps every variant of the "
                 "case has trained, acc: the accuracy there, -BP pts: minus the BP twin's there, in points")
    return "\n".join(lines)


def write_outputs(jobs: list[Job], out: Path) -> None:
    (out / "table.txt").write_text(table(jobs) + "\n")
    keys = sorted({k for j in jobs for p in j.curve for k in p})
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["case", "variant", *keys])
        writer.writeheader()
        for j in jobs:
            for point in j.curve:
                writer.writerow({"case": j.case, "variant": j.variant, **point})
    plot(jobs, out / "curves.png")


def plot(jobs: list[Job], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(j.case for j in jobs))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for j in jobs:
            if j.case == case and j.curve:
                ax.plot([p["epoch"] for p in j.curve], [p["test_acc"] for p in j.curve],
                        "--" if j.variant == "bp" else "-", marker=".", label=j.variant)
        ax.set_title(case)
        ax.set_xlabel("epochs")
        ax.set_ylabel("test accuracy (last exit)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with mnist/ and cifar10/ Parquet shards")
    p.add_argument("--quick", action="store_true", help="the embedded digits only (a test of the benchmark)")
    p.add_argument("--out", required=True, help="output folder: state/, curves.csv, table.txt, curves.png")
    p.add_argument("--budget-minutes", type=float, required=True, help="wall time of this (re)start")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state/")
    p.add_argument("--cases", default=None, help="comma-separated subset of the cases")
    p.add_argument("--segments-per-epoch", type=int, default=4)
    p.add_argument("--limit-train", type=int, default=None, help="training samples per case (default: all)")
    p.add_argument("--limit-test", type=int, default=None, help="test samples per case (default: all)")
    p.add_argument("--mlp-d", type=int, default=1024, help="target width d of the CIFAR-10 MLP (paper: 3000)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    deadline = time.perf_counter() + 60 * args.budget_minutes
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        unknown = set(args.cases.split(",")) - set(cases)
        if unknown:
            p.error(f"unknown case(s) {', '.join(sorted(unknown))} (known: {', '.join(cases)})")
        cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
    out = Path(args.out)
    state_dir = out / "state"
    if not args.resume and state_dir.exists() and any(state_dir.iterdir()):
        p.error(f"{state_dir} holds an earlier run: pass --resume to continue it, or another --out")
    state_dir.mkdir(parents=True, exist_ok=True)
    root = None if args.quick else datasets_root(args.data)
    torch.set_num_threads(args.threads)
    print(f"AL vs BP, long budget: {args.budget_minutes} min, {torch.get_num_threads()} torch thread(s), "
          f"{args.segments_per_epoch} segments per epoch, AL as al_local (in this process)", flush=True)
    jobs = []
    for case, (data_spec, model) in cases.items():
        limits = {"limit_train": args.limit_train, "limit_test": args.limit_test}
        data_spec = {**{k: v for k, v in data_spec.items() if k not in limits},
                     **{k: v for k, v in limits.items() if v is not None}}
        model = {**model, "d": args.mlp_d} if case == "cifar10_mlp" else model
        base = case_config(data_spec, model, PAPER_EPOCHS, "al_local", args.threads, root, 1.0)
        data = load_dataset(config_from_dict(base).data)
        print(f"== {case}: train {tuple(data.train_x.shape)} test {len(data.test_x)} {data.num_classes} classes",
              flush=True)
        for variant in VARIANTS:
            extra = {"bp": {"train": {"trainer": "bp"}}, "al_paper": {},
                     "al_warmup": warmup(data.num_classes)}[variant]
            job = Job(case, variant, case_config(data_spec, model, PAPER_EPOCHS, "al_local", args.threads, root,
                                                 1.0, extra), data, state_dir, args.segments_per_epoch)
            job.start(args.resume, lambda line, c=case, v=variant: print(f"  [{c} {v}] {line}", flush=True))
            jobs.append(job)
    while (job := next_job(jobs, deadline)) is not None:
        job.run_segment(lambda line, j=job: print(f"  [{j.case} {j.variant}] {line}", flush=True))
        write_outputs(jobs, out)
    write_outputs(jobs, out)
    print("\n" + table(jobs), flush=True)
    print(f"wrote {out / 'table.txt'}, {out / 'curves.csv'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
