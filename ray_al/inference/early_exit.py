"""Early exit in ray_al: every AL block can predict, so an input whose exit k is confident enough
never runs blocks k+1..N.

Exit k's prediction is h_1(...h_k(b_k(s_k))) with s_k = f_k(...f_1(x)). The stage API: stage k
maps s_{k-1} to (s_k, exit k's logits), and `answer`, the one early-exit loop (both in
exit_loop.py), walks the stages of whatever holds them:

    LocalRunner     this file        `Stage` modules sharing the blocks, in this process
    ActorRunner     prediction.py    the Ray block actors (ALPipeline.stage)
    HandleStages    serve.py         one Serve deployment per stage (StageDeployment), awaited
    ExportedAL      exit_loop.py     the torch.export programs of `ray-al export`
    Replay          this file        exits computed once, for the threshold trade-off

`tradeoff` scores thresholds by replaying `answer` on every exit's logits computed once.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ray_al.core.blocks import set_readouts
from ray_al.inference.exit_loop import (  # noqa: F401  (the loop's names, for everything in ray_al)
    MEASURES,
    Answers,
    ExitPolicy,
    Stages,
    answer,
    answer_async,
    confidence,
    every_exit,
)


# -- the stages of the prediction path --------------------------------------------------------------
class ExitHead(nn.Module):
    """Exit k from s_k: b_k, then h_k..h_2 each as sigmoid(h(t)), then h_1 as logits; the same
    operations as ALBlock.bridge, ALBlock.decode and ALBlock.decode_logits. With a read-out
    (model.exit_readout=targets) b_k's output times it instead, as ALBlock.read_out."""

    def __init__(self, bridge: nn.Module, decoders: list[nn.Module], readout: torch.Tensor | None = None):
        super().__init__()
        self.bridge, self.decoders = bridge, nn.ModuleList(decoders)  # decoders: h_k .. h_1
        self.register_buffer("readout", readout)  # a buffer: torch.export keeps it in the program

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        t = self.bridge(s)
        if self.readout is not None:
            return t.flatten(1) @ self.readout
        for h in self.decoders[:-1]:
            t = torch.sigmoid(h(t))
        return self.decoders[-1](t)


class Stage(nn.Module):
    """Block k at inference: s_k = f_k(s_{k-1}) and exit k's logits (what `ray-al export` writes)."""

    def __init__(self, f: nn.Module, head: ExitHead):
        super().__init__()
        self.f, self.head = f, head

    def forward(self, s_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.f(s_prev)
        return s, self.head(s)


def stages_of(blocks: list) -> list[Stage]:
    """Stages sharing the blocks' modules (no copy), in eval mode (BatchNorm uses its running statistics).
    Blocks 1..k suffice for stage k (its exit decodes through h_k..h_1)."""
    set_readouts(blocks)
    stages = [Stage(b.f, ExitHead(b.b, [blocks[j].h for j in range(k, -1, -1)], b.readout))
              for k, b in enumerate(blocks)]
    for st in stages:
        st.eval()
    return stages


class LocalRunner:
    """`Stages` in this process."""

    def __init__(self, stages: list[Stage]):
        self.stages, self.n = stages, len(stages)

    @torch.no_grad()
    def forward(self, k: int, s: torch.Tensor) -> torch.Tensor:
        """s_k from s_{k-1}."""
        return self.stages[k - 1].f(s)

    @torch.no_grad()
    def exit_logits(self, k: int, s: torch.Tensor) -> torch.Tensor:
        """Exit k's logits from s_k."""
        return self.stages[k - 1].head(s)

    def stage(self, k: int, s_prev: torch.Tensor, with_exit: bool = True):
        s = self.forward(k, s_prev)
        return s, (self.exit_logits(k, s) if with_exit else None)


# -- the trade-off, from every exit's logits at once ------------------------------------------------------
class Replay:
    """`Stages` over exits computed once: the "features" are the row numbers, and stage k returns
    them with those rows of exit k's logits, so `answer` decides each threshold by its own rule."""

    def __init__(self, exit_logits: list[torch.Tensor]):
        self.exit_logits, self.n = exit_logits, len(exit_logits)

    def stage(self, k: int, rows: torch.Tensor, with_exit: bool = True):
        return rows, self.exit_logits[k - 1][rows]


def tradeoff(exit_logits: list[torch.Tensor], y: torch.Tensor, thresholds: list[float], measure: str = "maxprob",
             costs: dict | None = None) -> list[dict]:
    """Per threshold: accuracy, the share of inputs answered at each exit, blocks evaluated per
    input and (with `costs` from `stage_costs`) compute relative to the plain last-exit path;
    then the last exit alone."""
    n_exits, replay, rows = len(exit_logits), Replay(exit_logits), torch.arange(len(y))
    policies = [ExitPolicy(None, t, measure) for t in thresholds] + [ExitPolicy(n_exits, 1.0, measure)]
    out = []
    for policy in policies:
        ans = answer(replay, rows, policy)
        row = {"threshold": "last exit" if policy.exit else policy.threshold,
               "accuracy": float((ans.prediction == y).float().mean()),
               **{f"exit_{k}_share": float((ans.exit == k).float().mean()) for k in range(1, n_exits + 1)},
               "blocks_per_input": float(ans.exit.float().mean())}
        if costs:
            used = torch.tensor(costs["cumulative"])[ans.exit - 1]
            row["compute_vs_last_exit"] = 1.0 if policy.exit else float(used.double().mean()) / costs["last_exit_only"]
        out.append(row)
    return out


def stage_costs(stages: list[Stage], input_shape: tuple) -> dict:
    """FLOPs per input (torch's flop counter, one sample): of each f_k and each exit head, the
    cumulative cost of an input answered at exit k (every exit before it was read too), and the
    plain path f_1..f_N plus exit N."""
    from torch.utils.flop_counter import FlopCounterMode

    f_cost, head_cost, s = [], [], torch.zeros(1, *input_shape)
    with torch.no_grad():
        for st in stages:
            with FlopCounterMode(display=False) as fc:
                s = st.f(s)
            f_cost.append(fc.get_total_flops())
            with FlopCounterMode(display=False) as fc:
                st.head(s)
            head_cost.append(fc.get_total_flops())
    cumulative, total = [], 0
    for f, h in zip(f_cost, head_cost):
        total += f + h
        cumulative.append(total)
    return {"f": f_cost, "head": head_cost, "cumulative": cumulative, "last_exit_only": sum(f_cost) + head_cost[-1]}


DEFAULT_THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def measure_tradeoff(blocks: list, x: torch.Tensor, y: torch.Tensor, thresholds: list[float],
                     measure: str = "maxprob", batch_size: int = 1000) -> dict:
    """Every exit's logits on (x, y) once (the stages in this process), then `tradeoff` at each
    threshold, with FLOPs."""
    stages = stages_of(blocks)
    runner = LocalRunner(stages)
    parts = [every_exit(runner, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    exit_logits = [torch.cat([p[k] for p in parts]) for k in range(len(blocks))]
    costs = stage_costs(stages, tuple(x.shape[1:]))
    return {"measure": measure, "test_samples": len(y), "costs": costs,
            "rows": tradeoff(exit_logits, y, thresholds, measure, costs)}


def format_tradeoff(rows: list[dict]) -> str:
    n = sum(1 for k in rows[0] if k.startswith("exit_"))
    head = ["threshold", "accuracy", *[f"exit {k}" for k in range(1, n + 1)], "blocks/input"]
    has_cost = "compute_vs_last_exit" in rows[0]
    head += ["FLOPs vs last exit"] if has_cost else []
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for r in rows:
        t = r["threshold"]
        cells = [f"{t:>12}" if isinstance(t, str) else f"{t:>12g}", f"{r['accuracy']:>12.4f}",
                 *[f"{r[f'exit_{k}_share']:>12.1%}" for k in range(1, n + 1)], f"{r['blocks_per_input']:>12.3f}"]
        cells += [f"{r['compute_vs_last_exit']:>12.3f}"] if has_cost else []
        lines.append("  ".join(cells))
    return "\n".join(lines)
