"""Light bridges, accuracy at equal steps: one (case, variant) run on real CIFAR-10, AL as al_local.

    python -m benchmarks.light_bridges_accuracy --data DIR --case cnn --variant pooled --steps 400 --out OUT
    python -m benchmarks.light_bridges_accuracy ... --steps 1600 --resume     # continue the same run

The run starts from configs/quick/cifar10_<case>_al.yaml (its target-path warm-up, lr, jitter) on the
full training split less `--val-fraction` held out, and the full test set. Variants: a `model.bridge`
value (AL), `bp` (the BP twin with the paper's dense head) or `bp_<bridge>` (the twin with that head).
Every `--eval-every` steps it appends one line to OUT/<case>-<variant>.jsonl: step, training seconds
(warm-up included, evaluation excluded), the last exit's validation and test accuracy and every exit's.
Variants are chosen on validation accuracy; test accuracy is reported, not tuned on. The trainer's
state is saved at the end (not for the dense bridge: about a gigabyte) so `--resume` can go on.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, datasets_root
from ray_al.config import load_config
from ray_al.core.batches import batches_per_epoch, epoch_chunks
from ray_al.core.metrics import split_accuracies
from ray_al.core.target_path import warm_up
from ray_al.data.datasets import load_dataset
from ray_al.run.factory import make_trainer

CASES = {"cnn": "cifar10_cnn", "resnet20": "cifar10_resnet20"}


def variant_overrides(variant: str) -> list[str]:
    """`pooled` -> AL with that bridge; `bp` -> the BP twin, dense head; `bp_pooled` -> the twin, pooled head."""
    if variant == "bp":
        return ["train.trainer=bp", "model.bridge=dense"]
    if variant.startswith("bp_"):
        return ["train.trainer=bp", f"model.bridge={variant[3:]}"]
    return ["train.trainer=al_local", f"model.bridge={variant}"]


def case_config(case: str, variant: str, data_dir: Path, val_fraction: float, threads: int):
    overrides = [f"data.path={data_dir}", "data.limit_train=null", "data.limit_test=null",
                 f"data.val_fraction={val_fraction}", f"train.threads={threads}", "checkpoint.enabled=false",
                 *variant_overrides(variant)]
    return load_config(REPO / "configs" / "quick" / f"{CASES[case]}_al.yaml", overrides)


class Run:
    """One variant's trainer, where it is in the data, and its curve so far."""

    def __init__(self, cfg, data, out: Path, name: str, total_steps: int):
        self.cfg, self.data, self.name = cfg, data, name
        self.curve_path, self.state_path = out / f"{name}.jsonl", out / "state" / f"{name}.pt"
        self.n_batches = batches_per_epoch(len(data.train_x), cfg.data.batch_size)
        torch.manual_seed(0)
        self.trainer = make_trainer(cfg, data.input_shape, data.num_classes, total_steps)
        self.step, self.seconds = 0, 0.0

    def start(self, resume: bool, log) -> None:
        if resume and self.state_path.exists():
            saved = torch.load(self.state_path, weights_only=False)
            self.trainer.load_state_dicts(saved["states"])
            self.step, self.seconds = saved["step"], saved["seconds"]
            log(f"resumed at step {self.step}")
            return
        self.curve_path.unlink(missing_ok=True)
        if self.cfg.model.target_warmup_steps and self.cfg.train.trainer != "bp":
            self.seconds += warm_up(self.trainer, self.cfg.model, self.data.num_classes, self.cfg.train.chunk_size,
                                    log)["warmup_time_s"]

    def train_to(self, step: int) -> None:
        """Train up to `step` (epochs roll over; each batch is a function of (seed, epoch, batch))."""
        k = self.cfg.train.chunk_size
        while self.step < step:
            epoch, batch = divmod(self.step, self.n_batches)
            n = min(step - self.step, self.n_batches - batch)
            chunks = epoch_chunks(self.data.train_x, self.data.train_y, self.cfg.data.batch_size, k, epoch,
                                  self.cfg.train.seed, self.cfg.data.augment, start_batch=batch)
            begin = time.perf_counter()
            for chunk in itertools.islice(chunks, -(-n // k)):
                keep = min(chunk.x.shape[0], step - self.step)
                chunk.x, chunk.y = chunk.x[:keep], chunk.y[:keep]
                self.trainer.train_epoch([chunk], lambda stats: None)
                self.step += keep
            self.seconds += time.perf_counter() - begin

    def evaluate(self) -> dict:
        point = {"variant": self.name, "step": self.step, "seconds": self.seconds,
                 **split_accuracies("val", self.trainer.evaluate(self.data.val_x, self.data.val_y)),
                 **self.trainer.evaluate(self.data.test_x, self.data.test_y)}
        with open(self.curve_path, "a") as f:
            f.write(json.dumps(point) + "\n")
        return point

    def save(self) -> None:
        if self.cfg.model.bridge == "dense" and self.cfg.train.trainer != "bp":
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({"states": self.trainer.state_dicts(), "step": self.step, "seconds": self.seconds}, tmp)
        tmp.replace(self.state_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with cifar10/ Parquet shards (default: RAY_AL_DATASETS)")
    p.add_argument("--case", choices=sorted(CASES), required=True)
    p.add_argument("--variant", required=True, help="a model.bridge value, bp, or bp_<bridge>")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state/<case>-<variant>.pt")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.case}-{args.variant}"
    cfg = case_config(args.case, args.variant, datasets_root(args.data) / "cifar10", args.val_fraction, args.threads)
    data = load_dataset(cfg.data)

    def log(line):
        print(f"[{name}] {line}", flush=True)

    log(f"train {tuple(data.train_x.shape)} val {len(data.val_x)} test {len(data.test_x)}; "
        f"{torch.get_num_threads()} thread(s)")
    run = Run(cfg, data, out, name, total_steps=args.steps)
    run.start(args.resume, log)
    while run.step < args.steps:
        run.train_to(min(args.steps, (run.step // args.eval_every + 1) * args.eval_every))
        point = run.evaluate()
        log(f"step {point['step']} {point['seconds']:.0f}s val_acc={point['val_acc']:.4f} "
            f"test_acc={point['test_acc']:.4f}")
        run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
