"""The target path alone: warm-up and separability. No Ray here; both trainers call these.

g_i and h_i never see x: block 1 encodes one of C labels, so the whole input domain of the
target path is C points. Until g_1..g_i map the C classes to distinct t_i that h_i..h_1 decode
back, the bridge of block i regresses onto nearly constant targets and its exit (the paper's
prediction, at i = N) stays at chance. Warm-up trains g and h alone on the C class points,
through the chain, before the first data step; separability measures, at every depth, how far
apart the class targets are and whether they decode back to their class.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ray_al.config import ModelConfig
from ray_al.core.record import chunk_losses, sep_acc_key, sep_dist_key
from ray_al.core.record import separability as rec_separability


def class_points(num_classes: int) -> torch.Tensor:
    """Every class once: the whole input domain of the target path (block 1 takes labels)."""
    return torch.arange(num_classes)


def warmup_lr(model: ModelConfig, d: int) -> float:
    """model.target_warmup_lr, or by default 3e-3 at target width d <= 256 and 3e-3 x 256 / d above: an Adam
    step moves every weight by about lr, so a pre-activation over d inputs by about lr x d, and too large a
    move saturates the sigmoids and collapses the class targets. Measured (benchmarks/target_path_probe.py,
    10 classes): d=256, 3e-3 separated 4 depths in 200 steps, 1e-3 needed 500, 1e-2 collapsed; d=1024,
    2 blocks, 300 steps: 3e-3 decoded 0.30 of the classes, 1e-3 and 7e-4 all of them."""
    return model.target_warmup_lr or 3e-3 * min(1.0, 256 / d)


def check_every(model: ModelConfig) -> int:
    """Warm-up steps between separability checks: target_warmup_check_every, or all of them at until=steps."""
    steps = model.target_warmup_steps
    return model.target_warmup_check_every if model.target_warmup_until == "separated" else max(steps, 1)


def warmup_chunks(model: ModelConfig, num_classes: int, chunk_size: int) -> Iterator[torch.Tensor]:
    """Label chunks [K, C] for warm-up steps 0 .. target_warmup_steps - 1, none straddling a check
    (check_every). Every step's batch is all C classes once: the exact class-balanced gradient of the
    autoencoder losses, nothing drawn at random to reproduce, and measured to separate the deep targets
    sooner than batches of 32 random labels (10 classes, 4 blocks, 200 steps: depths decoded [1.0 1.0 0.8 0.1]
    against [1.0 0.8 0.1 0.1])."""
    steps, every, first = model.target_warmup_steps, check_every(model), 0
    while first < steps:
        k = min(chunk_size, steps - first, every - first % every)
        yield class_points(num_classes).expand(k, num_classes).contiguous()
        first += k


def separability(targets: list[torch.Tensor], logits: list[torch.Tensor]) -> dict[str, float]:
    """targets[i]: the C class targets t_{i+1} [C, d]; logits[i]: them decoded through h_{i+1}..h_1.
    sep_dist_k: mean pairwise Euclidean distance of the class targets at depth k (0: all alike);
    sep_acc_k: the fraction of classes whose target decodes back to that class (1/C: chance)."""
    out = {}
    for k, (t, z) in enumerate(zip(targets, logits), start=1):
        out[sep_dist_key(k)] = float(torch.pdist(t.double()).mean())
        out[sep_acc_key(k)] = float((z.argmax(dim=1).cpu() == class_points(len(z))).double().mean())
    return out


def format_separability(record: dict) -> str:
    """`sep=[1.00 0.90 0.10]`: decoding accuracy of the class targets at each depth, or ''."""
    accs = list(rec_separability(record).values())
    return f"sep=[{' '.join(f'{a:.2f}' for a in accs)}]" if accs else ""


def separated(sep: dict[str, float]) -> bool:
    """Every depth decodes every class back (all sep_acc_k == 1)."""
    return all(v == 1.0 for k, v in sep.items() if k.startswith("sep_acc_"))


def _take(chunks: Iterator[torch.Tensor], steps: int, done: list[int]) -> Iterator[torch.Tensor]:
    """Chunks from `chunks` up to `steps` steps (never one more: the next segment takes it); adds to done[0]."""
    taken = 0
    while taken < steps:
        chunk = next(chunks, None)
        if chunk is None:
            return
        taken += len(chunk)
        done[0] += len(chunk)
        yield chunk


def warm_up(trainer, model: ModelConfig, num_classes: int, chunk_size: int, log) -> dict:
    """Warm up through `trainer` (ALLocal or ALPipeline: same chain, same arithmetic) in segments of
    check_every steps, each streamed whole, until every depth is separated (until=separated) or the
    target_warmup_steps bound; then end_warmup once, so one warm-up Adam spans the segments. The stop
    is a function of the state at fixed step boundaries, so every trainer stops at the same step.
    Logs what it bought; returns the figures for the run's summary."""
    import time

    losses: list[list[dict]] = []
    bound, every, done = model.target_warmup_steps, check_every(model), [0]
    chunks = iter(warmup_chunks(model, num_classes, chunk_size))
    begin = time.perf_counter()
    while True:
        before = done[0]
        trainer.warmup(_take(chunks, min(every, bound - done[0]), done), losses.append)
        sep = trainer.target_separability()
        stop = model.target_warmup_until == "separated" and separated(sep)
        if stop or done[0] >= bound or done[0] == before:
            break
    trainer.end_warmup()
    seconds = time.perf_counter() - begin
    steps = done[0]
    ae = " ".join(f"{k}={v:.4f}" for k, v in chunk_losses(losses[-1]).items()) if losses else ""
    how = (f"stopped at {steps} of {bound} steps (every depth separated)" if stop and steps < bound
           else f"ran all {steps} steps" if steps == bound else f"ran {steps} of {bound} steps")
    log(f"target warm-up: {how} in {seconds:.2f}s {ae} {format_separability(sep)}")
    return {"warmup_steps": steps, "warmup_steps_bound": bound, "warmup_time_s": seconds, **sep}
