"""Many classes: what brings AL's last exit within reach of the BP twin on 100 classes.

    python -m benchmarks.many_classes --data DIR --case cifar100_mlp --out benchmarks/results/many_classes
    python -m benchmarks.many_classes --case synth100_mlp --variants bp,warmup,readout --epochs 2 --out OUT
    python -m benchmarks.many_classes --quick --out OUT        # small synthetic case, seconds: the test's

Each variant is a set of dotted overrides on the case's config (for CIFAR-100 the shipped
configs/quick/cifar100_<model>_al.yaml, on the 10,000 training images of `cifar100-dev` less
`--val-fraction` held out, and its 10,000 development-test images). Every variant trains through the
run loop on the same batches in the same order (same seed) and is evaluated after every epoch; one
line per (variant, epoch) goes to OUT/<case>.jsonl: validation and test accuracy of the last exit,
every exit on test, separability, warm-up steps and seconds, training seconds. At the end a table:
each variant's validation accuracy (what the choice is made on) and, beside it, its test accuracy as
a fraction of the BP twin's at the same epoch, over every run into OUT so far (a variant run again:
its newest rows). The losers stay in the table. Figures on cifar100-dev
are development figures: its test split is drawn from CIFAR-100's training set.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, datasets_root
from ray_al.config import changed, load_config
from ray_al.core import record
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import train

READOUT = ["model.exit_readout=targets"]
SPREAD = READOUT + ["model.class_code_std=3", "model.target_warmup_steps=0"]  # far-apart codes, no warm-up
# name -> overrides on the case's AL config; "bp" is the BP twin on the same batches
VARIANTS = {
    "bp": ["train.trainer=bp"],
    "paper": ["model.target_warmup_steps=0"],                # the paper's algorithm (decoders, no warm-up)
    "warmup": [],                                            # the quick config as it was: warm-up, decoders
    "ce": ["model.first_decoder_ce=true"],                   # block 1 decodes with cross-entropy
    "glr1": ["optim.target_lr_scale=1"],                     # g/h at lr x1 instead of x2
    "glr4": ["optim.target_lr_scale=4"],
    "readout": READOUT,                                      # least squares onto the class targets
    "readout_nowarm": READOUT + ["model.target_warmup_steps=0"],
    "readout_ce": READOUT + ["model.first_decoder_ce=true"],
    "readout_glr1": READOUT + ["optim.target_lr_scale=1"],
    "readout_glr4": READOUT + ["optim.target_lr_scale=4"],
    "readout_warm100": READOUT + ["model.target_warmup_steps=100"],   # warm-up length: how far apart the
    "readout_warm3000": READOUT + ["model.target_warmup_steps=3000"],  # class targets start
    "readout_lr3e-4": READOUT + ["optim.lr=3e-4"],
    "bp_lr3e-4": ["train.trainer=bp", "optim.lr=3e-4"],      # the twin at the same lr
    "readout_lr1e-3": READOUT + ["optim.lr=1e-3"],
    "bp_lr1e-3": ["train.trainer=bp", "optim.lr=1e-3"],
    "spread": ["model.class_code_std=3"],                    # class codes far apart from the start
    "readout_spread": READOUT + ["model.class_code_std=3"],
    "readout_spread_nowarm": SPREAD,
    "readout_spread1_nowarm": READOUT + ["model.class_code_std=1", "model.target_warmup_steps=0"],
    "readout_spread5_nowarm": READOUT + ["model.class_code_std=5", "model.target_warmup_steps=0"],
    "readout_spread_nowarm_lr3e-4": SPREAD + ["optim.lr=3e-4"],
    "readout_spread_nowarm_pooled": SPREAD + ["model.bridge=pooled"],
    "readout_spread_nowarm_wide": SPREAD + ["model.bridge=wide"],
    "readout_spread_nowarm_frozen": SPREAD + ["optim.target_lr_scale=1e-6"],  # fixed random class codes
    "readout_spread_nowarm_d1000": SPREAD + ["model.d=1000"],
    "bp_d1000": ["train.trainer=bp", "model.d=1000"],       # the twin of the d=1000 variants
    "readout_spread_nowarm_glr1": SPREAD + ["optim.target_lr_scale=1"],
    "readout_spread_nowarm_glr0.5": SPREAD + ["optim.target_lr_scale=0.5"],
    "readout_spread2_nowarm": READOUT + ["model.class_code_std=2", "model.target_warmup_steps=0"],
    "readout_spread_nowarm_lr2e-4": SPREAD + ["optim.lr=2e-4"],
    "bp_lr2e-4": ["train.trainer=bp", "optim.lr=2e-4"],
    # the bridge pushed away from the other classes' targets as well (model.bridge_loss=contrastive)
    "contrastive": SPREAD + ["model.bridge_loss=contrastive"],
    "contrastive_t0.02": SPREAD + ["model.bridge_loss=contrastive", "model.bridge_temperature=0.02"],
    "contrastive_t0.2": SPREAD + ["model.bridge_loss=contrastive", "model.bridge_temperature=0.2"],
    "contrastive_t0.01": SPREAD + ["model.bridge_loss=contrastive", "model.bridge_temperature=0.01"],
    "contrastive_lr2e-4": SPREAD + ["model.bridge_loss=contrastive", "optim.lr=2e-4"],
    "readout_spread_nowarm_lr2e-4_glr1": SPREAD + ["optim.lr=2e-4", "optim.target_lr_scale=1"],
    "readout_gradg": READOUT + ["model.bridge_grad_to_g=true"],  # targets pulled toward what f reaches
    "readout_d64": READOUT + ["model.d=64"],                 # d < C: the C targets cannot be independent
    "readout_d128": READOUT + ["model.d=128"],
    "readout_d256": READOUT + ["model.d=256"],
    "pooled": ["model.bridge=pooled"],                       # the light bridges (CNN), decoders
    "readout_pooled": READOUT + ["model.bridge=pooled"],
    "readout_wide": READOUT + ["model.bridge=wide"],
}
CASES = {  # name -> (config, overrides); d as each config ships it unless a variant says otherwise
    "cifar100_mlp": ("configs/quick/cifar100_mlp_al.yaml", ["data.source=parquet", "data.path={root}/cifar100-dev"]),
    "cifar100_cnn": ("configs/quick/cifar100_cnn_al.yaml", ["data.source=parquet", "data.path={root}/cifar100-dev"]),
    # 10 classes, the control: does what helps on 100 classes cost anything on 10? (quick config's 6,400 images)
    "mnist_mlp": ("configs/quick/mnist_mlp_al.yaml", ["data.source=parquet", "data.path={root}/mnist"]),
    "cifar10_mlp": ("configs/quick/cifar10_mlp_al.yaml", ["data.source=parquet", "data.path={root}/cifar10"]),
    # the synthetic 100-class case of benchmarks/time_to_accuracy.py: 4 blocks, class means in noise
    "synth100_mlp": ("configs/quick/cifar100_mlp_al.yaml",
                     ["data.source=synthetic", "data.synthetic_shape=[3,16,16]", "data.synthetic_classes=100",
                      "data.synthetic_noise=100.0", "data.synthetic_size=10000", "model.d=256", "model.depth=4",
                      "data.augment=none"]),
    "quick": ("configs/quick/cifar100_mlp_al.yaml",
              ["data.source=synthetic", "data.synthetic_shape=[1,8,8]", "data.synthetic_classes=100",
               "data.synthetic_noise=40.0", "data.synthetic_size=1000", "model.d=128", "model.depth=3",
               "data.augment=none", "model.target_warmup_steps=200"]),
}
DEFAULT_VARIANTS = {
    "cifar100_mlp": "bp,paper,warmup,ce,glr1,glr4,readout,readout_nowarm,readout_ce,readout_glr1,readout_glr4,"
                    "readout_d64,readout_d128,readout_d256",
    "cifar100_cnn": "bp,pooled,readout_pooled",  # the dense bridge: ~10 s a step on 2 shared cores
    "synth100_mlp": "bp,paper,warmup,readout,readout_nowarm",
    "quick": "bp,warmup,readout",
}


def case_config(case: str, variant: str, root: Path, epochs: int, val_fraction: float, threads: int, extra: list):
    path, overrides = CASES[case]
    return load_config(REPO / path, [o.format(root=root) for o in overrides] + [
        "data.limit_train=null", "data.limit_test=null", f"data.val_fraction={val_fraction}",
        f"train.epochs={epochs}", f"train.threads={threads}", "train.trainer=al_local", "train.log_every_s=0",
        "checkpoint.enabled=false", "log.tensorboard=false", *VARIANTS[variant], *extra])


def run_variant(cfg, data, case: str, variant: str, log) -> list[dict]:
    """One variant through the run loop; a row per epoch."""
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs:  # the run folders are scaffolding: the rows are the result
        result = train(changed(cfg, {"run_dir": runs}), data=data,
                       log=lambda line: log(line) if line.startswith(("target warm-up", "epoch")) else None)
    warm = result.warmup
    rows = []
    for rec in result.history:
        rows.append({"case": case, "variant": variant, "epoch": rec["epoch"], "step": rec["step"],
                     "val_acc": rec.get("val_acc"), "test_acc": rec["test_acc"],
                     "exits": list(record.exits(rec).values()), "separability": list(record.separability(rec).values()),
                     "warmup_steps": warm.get("warmup_steps", 0), "warmup_time_s": warm.get("warmup_time_s", 0.0),
                     "train_time_s": rec.get("train_time_s"), "overrides": VARIANTS[variant],
                     "wall_s": time.perf_counter() - begin})
    return rows


def table(rows: list[dict]) -> list[str]:
    """Each variant's last-exit validation accuracy by epoch, and its test accuracy over BP's at that epoch."""
    bp = {r["epoch"]: r["test_acc"] for r in rows if r["variant"] == "bp"}
    epochs = sorted({r["epoch"] for r in rows})
    lines = ["| variant | " + " | ".join(f"val ep {e}" for e in epochs) + " | "
             + " | ".join(f"test ep {e} (x BP)" for e in epochs) + " | warm-up steps | overrides |",
             "|---|" + "---|" * (2 * len(epochs) + 2)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = {r["epoch"]: r for r in rows if r["variant"] == variant}
        vals = " | ".join(f"{mine[e]['val_acc']:.4f}" if e in mine and mine[e]["val_acc"] is not None else "-"
                          for e in epochs)
        tests = " | ".join(f"{mine[e]['test_acc']:.4f} ({mine[e]['test_acc'] / bp[e]:.2f})" if e in mine and bp.get(e)
                           else (f"{mine[e]['test_acc']:.4f}" if e in mine else "-") for e in epochs)
        first = next(iter(mine.values()))
        lines.append(f"| {variant} | {vals} | {tests} | {first['warmup_steps']} | {' '.join(first['overrides'])} |")
    return lines


def across_seeds(paths: list[Path], twin: str) -> list[str]:
    """Every variant's mean validation accuracy (what a choice is made on) and its test accuracy over
    `twin`'s, mean (min..max), at each epoch over runs with other seeds (one jsonl per seed, same case):
    one run's ratio moves by several hundredths on 10,000 images."""
    runs = [latest([json.loads(line) for line in open(p)]) for p in paths]
    cells: dict[str, dict[int, list[tuple]]] = {}
    for rows in runs:
        base = {r["epoch"]: r["test_acc"] for r in rows if r["variant"] == twin}
        for r in rows:
            if r["epoch"] in base:
                cells.setdefault(r["variant"], {}).setdefault(r["epoch"], []).append(
                    (r.get("val_acc"), r["test_acc"] / base[r["epoch"]]))
    epochs = sorted({e for by_epoch in cells.values() for e in by_epoch})
    lines = [f"| variant: val / test x {twin} (min..max), mean of {len(paths)} seeds | "
             + " | ".join(f"ep {e}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
    for variant, by_epoch in cells.items():
        shown = []
        for e in epochs:
            got = by_epoch.get(e, [])
            vals, ratios = [v for v, _ in got if v is not None], [q for _, q in got]
            val = f"{sum(vals) / len(vals):.4f}" if vals else "-"  # runs without --val-fraction have none
            shown.append(f"{val} / {sum(ratios) / len(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f}) "
                         f"n={len(got)}" if got else "-")
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with cifar100-dev/ (default: RAY_AL_DATASETS)")
    p.add_argument("--case", choices=sorted(CASES), default="cifar100_mlp")
    p.add_argument("--quick", action="store_true", help="the small synthetic case, 1 epoch")
    p.add_argument("--variants", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="an override for every variant (repeatable)")
    p.add_argument("--out", help="folder of <case>.jsonl (appended to)")
    p.add_argument("--across", nargs="+", metavar="JSONL", help="no training: each variant's ratio to --twin, "
                                                                 "mean over these files (one per seed)")
    p.add_argument("--twin", default="bp", help="with --across: the variant the others are divided by")
    args = p.parse_args(argv)
    if args.across:
        print("\n".join(across_seeds([Path(a) for a in args.across], args.twin)))
        return 0
    if not args.out:
        p.error("--out is required (or --across)")
    case, epochs = ("quick", 1) if args.quick else (args.case, args.epochs)
    variants = (args.variants or DEFAULT_VARIANTS[case]).split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    root = datasets_root(args.data) if any("{root}" in o for o in CASES[case][1]) else Path(".")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{case}.jsonl"
    data = None
    for variant in variants:
        cfg = case_config(case, variant, root, epochs, args.val_fraction, args.threads, args.set)
        data = data or load_dataset(cfg.data)  # every variant: the same images, split and batches
        got = run_variant(cfg, data, case, variant, lambda line, v=variant: print(f"[{case} {v}] {line}", flush=True))
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in got)
    print("\n".join(table(latest([json.loads(line) for line in open(path)]))))  # this run's and earlier ones'
    return 0


def latest(rows: list[dict]) -> list[dict]:
    """The newest row of every (variant, epoch), in the order variants first appear."""
    return list({(r["variant"], r["epoch"]): r for r in rows}.values())


if __name__ == "__main__":
    raise SystemExit(main())
