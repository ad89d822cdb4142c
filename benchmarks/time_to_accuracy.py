"""Time to accuracy: AL (the paper's algorithm), AL with target-path warm-up, and the BP twin,
one after another on this machine, on the same batches in the same order.

    python -m benchmarks.time_to_accuracy --data DIR [--budget 1.0] [--epochs N] [--cases a,b] [--out PREFIX]
    python -m benchmarks.time_to_accuracy --quick --out OUT/tta      # digits + synthetic 100 classes, seconds

After every evaluation (`--evals-per-epoch` per epoch) it prints the accuracy of every exit; at
the end, the steps and the training seconds (warm-up included, evaluation excluded) each variant
needed to reach 90% of the BP twin's final accuracy, and it writes PREFIX.csv (every evaluation)
and PREFIX.png (last-exit accuracy against steps and against seconds, every variant on one axis).
`--variant NAME=key=value,key=value` adds a variant (dotted config overrides on the AL case), e.g.
`--variant ce=model.target_warmup_steps=300,model.first_decoder_ce=true`.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import datasets_root
from ray_al.config import apply_overrides, changed, config_from_dict
from ray_al.core import record
from ray_al.core.batches import batches_per_epoch
from ray_al.core.target_path import format_separability
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import Hooks, train


def warmup(num_classes: int) -> dict:
    """The warm-up configs/quick/ ships: 300 steps for 10 classes, 1000 for 100 (their deeper class
    targets take longer to separate), at the default warm-up lr."""
    return {"model": {"target_warmup_steps": 1000 if num_classes >= 100 else 300}}


def parquet(name, limit_train, limit_test=2000, augment="none"):
    return {"source": "parquet", "path": name, "limit_train": limit_train, "limit_test": limit_test,
            "augment": augment}


SYNTH100 = {"source": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_classes": 100,
            "synthetic_noise": 100.0}
# name -> (data, model, epochs); training-set sizes are scaled by --budget
CASES = {  # d reduced from the paper's 1024 / 3000 for the MLPs: 2 shared CPU cores
    "cifar10_mlp": (parquet("cifar10", 10000), {"name": "mlp", "d": 256}, 6),
    "mnist_mlp": (parquet("mnist", 6400), {"name": "mlp", "d": 256}, 3),
    "mnist_cnn": (parquet("mnist", 3200), {"name": "cnn"}, 2),
    "cifar10_cnn": (parquet("cifar10", 3200), {"name": "cnn"}, 2),
    "synth100_mlp": ({**SYNTH100, "synthetic_size": 10000}, {"name": "mlp", "d": 256, "depth": 4}, 3),
}
QUICK_CASES = {
    "digits_mlp": ({"source": "digits"}, {"name": "mlp", "d": 64}, 1),
    "synth100_mlp": ({**SYNTH100, "synthetic_shape": [1, 8, 8], "synthetic_size": 1000, "synthetic_noise": 40.0},
                     {"name": "mlp", "d": 64, "depth": 3}, 1),
}


def case_config(data: dict, model: dict, epochs: int, trainer: str, threads: int, root: Path | None,
                budget: float, extra: dict | None = None):
    data = dict(data)
    if data["source"] == "parquet":
        data["path"] = str(root / data["path"])
    for key in ("limit_train", "synthetic_size"):
        if key in data:
            data[key] = max(320, int(data[key] * budget))
    values = {"data": data, "model": dict(model), "optim": {"lr": 1e-4},
              "train": {"trainer": trainer, "epochs": epochs, "threads": threads, "log_every_s": 0},
              "checkpoint": {"enabled": False}, "run_dir": "/tmp"}
    for section, items in (extra or {}).items():
        values.setdefault(section, {}).update(items)
    return values


def run_variant(values: dict, data, evals_per_epoch: int, log) -> list[dict]:
    """Train one variant through the run loop; one record per evaluation (steps, training seconds,
    accuracies). The loop's hook evaluates between chunks; the clock stops for every evaluation (the
    hook's and the loop's own at epoch ends) and the warm-up's seconds are added."""
    cfg = config_from_dict(values)
    n_batches = batches_per_epoch(len(data.train_x), cfg.data.batch_size)
    curve, clock = [], {"since": 0.0, "seconds": 0.0}

    def evaluate(trainer, step):
        if step:  # step 0 (after warm-up) only starts the clock
            clock["seconds"] += time.perf_counter() - clock["since"]
            accs = trainer.evaluate(data.test_x, data.test_y)
            curve.append({"epoch": step / n_batches, "step": step, "seconds": clock["seconds"], **accs})
            exits = " ".join(f"{v:.4f}" for v in record.exits(accs).values())
            log(f"epoch {step / n_batches:.2f} step {step} {clock['seconds']:.1f}s test_acc={accs['test_acc']:.4f}"
                + (f" exits=[{exits}]" if len(record.exits(accs)) > 1 else "") + f" {format_separability(accs)}")
        clock["since"] = time.perf_counter()

    def restart_clock(epoch_record):  # the loop evaluated the epoch: not training time
        clock["since"] = time.perf_counter()

    every = max(1, -(-n_batches // evals_per_epoch))
    with tempfile.TemporaryDirectory() as runs:  # the run folders are scaffolding: the curve is the result
        result = train(changed(cfg, {"run_dir": runs, "log.tensorboard": False}), data=data,
                       log=lambda line: log(line) if line.startswith("target warm-up") else None,
                       hooks=Hooks(on_epoch=restart_clock, every_steps=every, on_steps=evaluate))
    for point in curve:
        point["seconds"] += result.warmup.get("warmup_time_s", 0.0)
    return curve


def reach(curve: list[dict], target: float) -> tuple[int | None, float | None]:
    for point in curve:
        if point["test_acc"] >= target:
            return point["step"], point["seconds"]
    return None, None


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    return name, apply_overrides({}, [item for item in spec.split(",") if item])


def plot(rows: list[dict], curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(case for case, _ in curves))
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 3.2 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        for (c, variant), curve in curves.items():
            if c != case:
                continue
            style = "--" if variant == "bp" else "-"
            for ax, key in zip(row, ("step", "seconds")):
                ax.plot([0] + [p[key] for p in curve], [1 / curve[0]["classes"]] + [p["test_acc"] for p in curve],
                        style, marker=".", label=variant)
        target = next(r["target"] for r in rows if r["case"] == case)
        for ax, xlabel in zip(row, ("steps", "training seconds (warm-up included)")):
            ax.axhline(target, color="grey", lw=0.8, ls=":", label="90% of BP final")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (last exit)")
            ax.set_title(case)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with mnist/ and cifar10/ Parquet shards")
    p.add_argument("--quick", action="store_true", help="digits and synthetic 100 classes only: seconds")
    p.add_argument("--budget", type=float, default=1.0, help="training-set size of every case times this")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every case (default: the case's own)")
    p.add_argument("--cases", default=None, help="comma-separated subset of the cases")
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--trainer", default="al_local", choices=["al_local", "al"],
                   help="al_local: the blocks in this process; al: through Ray actors (same arithmetic)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-defaults", action="store_true", help="only the BP twin and the --variant rows")
    p.add_argument("--variant", action="append", default=[], help="NAME=key=value,... (see the module doc)")
    p.add_argument("--out", default="time_to_accuracy", help="output prefix: PREFIX.csv, PREFIX.png")
    p.add_argument("--from-log", nargs="+", metavar="LOG",
                   help="no training: the table, CSV and PNG from the printed output of earlier runs")
    args = p.parse_args()
    if args.from_log:
        write_outputs(curves_from_log(args.from_log), Path(args.out))
        return 0
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        unknown = set(args.cases.split(",")) - set(cases)
        if unknown:
            p.error(f"unknown case(s) {', '.join(sorted(unknown))} (known: {', '.join(cases)})")
        cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
    root = None if args.quick else datasets_root(args.data)
    extra_variants = [parse_variant(v) for v in args.variant]
    torch.set_num_threads(args.threads)
    print(f"time to accuracy: trainer={args.trainer}, {args.threads} thread(s), budget {args.budget}, "
          f"{torch.get_num_threads()} torch threads; seconds = training time (warm-up in it, evaluation not)",
          flush=True)
    curves: dict = {}
    for case, (data_spec, model, epochs) in cases.items():
        epochs = args.epochs or epochs
        base = case_config(data_spec, model, epochs, args.trainer, args.threads, root, args.budget)
        data = load_dataset(config_from_dict(base).data)
        print(f"== {case}: train {tuple(data.train_x.shape)} test {len(data.test_x)} {data.num_classes} classes, "
              f"{epochs} epochs", flush=True)
        variants = ([] if args.no_defaults else [("al_paper", {}), ("al_warmup", warmup(data.num_classes))]) \
            + extra_variants
        for name, extra in [("bp", {"train": {"trainer": "bp"}})] + variants:
            values = case_config(data_spec, model, epochs, args.trainer, args.threads, root, args.budget, extra)
            curve = run_variant(values, data, args.evals_per_epoch,
                                lambda line, n=name: print(f"  [{case} {n}] {line}", flush=True))
            for point in curve:
                point["classes"] = data.num_classes
            curves[(case, name)] = curve
        write_outputs(curves, Path(args.out), final=case == list(cases)[-1])  # a killed run keeps its cases
    return 0


def summarise(curves: dict) -> list[dict]:
    """One row per (case, variant): steps and seconds to 90% of the BP twin's final accuracy."""
    rows = []
    for case in dict.fromkeys(c for c, _ in curves):
        target = 0.9 * curves[(case, "bp")][-1]["test_acc"]
        bp_step, bp_s = reach(curves[(case, "bp")], target)
        for (c, name), curve in curves.items():
            if c != case:
                continue
            step, seconds = reach(curve, target)
            rows.append({"case": case, "variant": name, "target": target, "final": curve[-1]["test_acc"],
                         "best_exit": max(v for k, v in curve[-1].items() if k.startswith("exit_") or k == "test_acc"),
                         "after_epoch_1": next((pt["test_acc"] for pt in curve if pt["epoch"] >= 1), float("nan")),
                         "steps_to_target": step, "seconds_to_target": seconds,
                         "steps_x_bp": step / bp_step if step and bp_step else None,
                         "seconds_x_bp": seconds / bp_s if seconds and bp_s else None,
                         "total_seconds": curve[-1]["seconds"], "steps": curve[-1]["step"]})
    return rows


def write_outputs(curves: dict, out: Path, final: bool = True) -> None:
    """PREFIX.csv (every evaluation) and PREFIX.png; with `final`, the table on stdout."""
    rows = summarise(curves)
    if final:
        print("\nsteps and training seconds to reach 90% of the BP twin's final accuracy (last exit; "
              "x BP: ratio to the BP twin; '-' never reached)")
        print(f"{'case':<13} {'variant':<16} {'target':>6} {'epoch 1':>7} {'final':>6} {'best exit':>9} "
              f"{'steps':>6} {'x BP':>5} {'seconds':>8} {'x BP':>5} {'total s':>8}")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        for r in rows:
            print(f"{r['case']:<13} {r['variant']:<16} {r['target']:>6.3f} {r['after_epoch_1']:>7.4f} "
                  f"{r['final']:>6.4f} {r['best_exit']:>9.4f} {fmt(r['steps_to_target'], 'd'):>6} "
                  f"{fmt(r['steps_x_bp'], '.2f'):>5} {fmt(r['seconds_to_target'], '.1f'):>8} "
                  f"{fmt(r['seconds_x_bp'], '.2f'):>5} {r['total_seconds']:>8.1f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for c in curves.values() for pt in c for k in pt}, key=lambda k: (k.startswith("sep"), k))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["case", "variant", *keys])
        writer.writeheader()
        for (case, name), curve in curves.items():
            for point in curve:
                writer.writerow({"case": case, "variant": name, **point})
    plot(rows, curves, out.with_suffix(".png"))
    if final:
        print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


_CASE = re.compile(r"^== (\S+): .* (\d+) classes")
_EVAL = re.compile(r"^  \[(\S+) (\S+)\] epoch ([\d.]+) step (\d+) ([\d.]+)s test_acc=([\d.]+)"
                   r"(?: exits=\[([^\]]*)\])?(?: sep=\[([^\]]*)\])?")


def curves_from_log(paths: list[str]) -> dict:
    """The evaluations a run printed (its stdout), read back: for a run stopped before it wrote its files."""
    curves, classes = {}, {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if m := _CASE.match(line):
                classes[m.group(1)] = int(m.group(2))
            elif m := _EVAL.match(line):
                case, name, epoch, step, seconds, acc, exits, sep = m.groups()
                point = {"epoch": float(epoch), "step": int(step), "seconds": float(seconds), "test_acc": float(acc),
                         "classes": classes[case]}
                point.update({f"exit_{k}": float(v) for k, v in enumerate((exits or "").split(), start=1)})
                point.update({f"sep_acc_{k}": float(v) for k, v in enumerate((sep or "").split(), start=1)})
                curves.setdefault((case, name), []).append(point)
    return curves


if __name__ == "__main__":
    sys.exit(main())
