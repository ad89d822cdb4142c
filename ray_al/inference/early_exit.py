"""Answering at the first confident exit: every AL block can predict, so an input whose exit k is
confident enough never runs blocks k+1..N.

Exit k's prediction is h_1(...h_k(b_k(s_k))) with s_k = f_k(...f_1(x)). A `Stage` is block k's
share of that at inference: f_k and exit k's head (b_k, then h_k..h_1). Prediction walks the
stages in order; `answer` is the one loop that every runner uses (in this process, through the Ray
block actors, behind Ray Serve), and `tradeoff` scores thresholds on precomputed exits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ray_al.errors import ConfigError

MEASURES = ("maxprob", "entropy")


def confidence(logits: torch.Tensor, measure: str = "maxprob") -> torch.Tensor:
    """maxprob: the top softmax probability; entropy: 1 - H(p) / log(C), also in [0, 1] (1: certain)."""
    p = F.softmax(logits.float(), dim=1)
    if measure == "maxprob":
        return p.max(dim=1).values
    if measure == "entropy":
        h = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
        return 1 - h / math.log(p.shape[1])
    raise ConfigError(f"unknown confidence measure '{measure}' (known: {', '.join(MEASURES)})")


@dataclass
class ExitPolicy:
    """`exit=k` answers every input at exit k; `exit=None` answers at the first exit whose confidence
    reaches `threshold`, and at the last exit otherwise."""
    exit: int | None = None
    threshold: float = 0.9
    measure: str = "maxprob"

    def check(self, n_blocks: int) -> "ExitPolicy":
        if self.exit is not None and not 1 <= self.exit <= n_blocks:
            raise ConfigError(f"--exit {self.exit}: the model has exits 1..{n_blocks}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"--threshold must be in [0, 1], got {self.threshold}")
        confidence(torch.zeros(1, 2), self.measure)  # rejects an unknown measure
        return self


# -- the stages of the prediction path --------------------------------------------------------------
class ExitHead(nn.Module):
    """Exit k from s_k: b_k, then h_k..h_2 each as sigmoid(h(t)), then h_1 as logits; the same
    operations as ALBlock.bridge, ALBlock.decode and ALBlock.decode_logits."""

    def __init__(self, bridge: nn.Module, decoders: list[nn.Module]):
        super().__init__()
        self.bridge, self.decoders = bridge, nn.ModuleList(decoders)  # decoders: h_k .. h_1

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        t = self.bridge(s)
        for h in self.decoders[:-1]:
            t = torch.sigmoid(h(t))
        return self.decoders[-1](t)


class Stage(nn.Module):
    """Block k at inference: s_k = f_k(s_{k-1}) and exit k's logits."""

    def __init__(self, f: nn.Module, head: ExitHead):
        super().__init__()
        self.f, self.head = f, head

    def forward(self, s_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.f(s_prev)
        return s, self.head(s)


def stages_of(blocks: list) -> list[Stage]:
    """Stages sharing the blocks' modules (no copy), in eval mode (BatchNorm uses its running statistics)."""
    stages = [Stage(b.f, ExitHead(b.b, [blocks[j].h for j in range(k, -1, -1)])) for k, b in enumerate(blocks)]
    for st in stages:
        st.eval()
    return stages


# -- the loop -----------------------------------------------------------------------------------------
class Runner(Protocol):
    """What `answer` needs from wherever the blocks live."""
    n: int

    def forward(self, k: int, s: torch.Tensor) -> torch.Tensor: ...          # s_k from s_{k-1} (k is 1-based)
    def exit_logits(self, k: int, s: torch.Tensor) -> torch.Tensor: ...      # exit k's logits from s_k


class LocalRunner:
    """The stages in this process."""

    def __init__(self, stages: list[Stage]):
        self.stages, self.n = stages, len(stages)

    @torch.no_grad()
    def forward(self, k: int, s: torch.Tensor) -> torch.Tensor:
        return self.stages[k - 1].f(s)

    @torch.no_grad()
    def exit_logits(self, k: int, s: torch.Tensor) -> torch.Tensor:
        return self.stages[k - 1].head(s)


@dataclass
class Answers:
    prediction: torch.Tensor   # class index per input
    confidence: torch.Tensor   # of the answering exit, by the policy's measure
    exit: torch.Tensor         # 1-based exit that answered

    @classmethod
    def cat(cls, parts: list["Answers"]) -> "Answers":
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("prediction", "confidence", "exit")))


def answer(runner: Runner, x: torch.Tensor, policy: ExitPolicy) -> Answers:
    """One batch through the stages in order; rows that are answered leave the batch, so an input
    answered at exit k never reaches block k+1."""
    n = len(x)
    pred, conf, ex = torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.zeros(n, dtype=torch.long)
    rows, s = torch.arange(n), x
    last = policy.exit or runner.n
    for k in range(1, last + 1):
        s = runner.forward(k, s)
        if k < last and policy.exit is not None:
            continue  # a fixed exit reads no earlier exit
        logits = runner.exit_logits(k, s)
        c = confidence(logits, policy.measure)
        done = torch.ones(len(rows), dtype=torch.bool) if k == last else c >= policy.threshold
        pred[rows[done]], conf[rows[done]], ex[rows[done]] = logits[done].argmax(dim=1).cpu(), c[done].cpu(), k
        if k == last or bool(done.all()):
            break
        rows, s = rows[~done], s[~done]
    return Answers(pred, conf, ex)


# -- the trade-off, from every exit's logits at once ------------------------------------------------------
def tradeoff(exit_logits: list[torch.Tensor], y: torch.Tensor, thresholds: list[float], measure: str = "maxprob",
             costs: dict | None = None) -> list[dict]:
    """Per threshold: accuracy, the share of inputs answered at each exit, blocks evaluated per
    input and (with `costs` from `stage_costs`) compute relative to the plain last-exit path.
    The same rule as `answer` (first exit reaching the threshold, else the last)."""
    n_exits = len(exit_logits)
    conf = torch.stack([confidence(z, measure) for z in exit_logits])          # [N, n]
    preds = torch.stack([z.argmax(dim=1) for z in exit_logits])               # [N, n]
    rows = []
    for t in thresholds:
        reached = conf >= t
        reached[-1] = True
        first = reached.float().argmax(dim=0)                                  # 0-based exit per input
        pred = preds.gather(0, first[None])[0]
        share = [float((first == k).float().mean()) for k in range(n_exits)]
        row = {"threshold": t, "accuracy": float((pred == y).float().mean()),
               **{f"exit_{k + 1}_share": share[k] for k in range(n_exits)},
               "blocks_per_input": float((first + 1).float().mean())}
        if costs:
            used = torch.tensor(costs["cumulative"])[first]
            row["compute_vs_last_exit"] = float(used.double().mean()) / costs["last_exit_only"]
        rows.append(row)
    full = preds[-1]
    rows.append({"threshold": "last exit", "accuracy": float((full == y).float().mean()),
                 **{f"exit_{k + 1}_share": float(k == n_exits - 1) for k in range(n_exits)},
                 "blocks_per_input": float(n_exits), **({"compute_vs_last_exit": 1.0} if costs else {})})
    return rows


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
    """Every exit's logits on (x, y) once, then `tradeoff` at each threshold, with FLOPs."""
    from ray_al.core.blocks import predict_all_exits

    with torch.no_grad():
        parts = [predict_all_exits(blocks, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    exit_logits = [torch.cat([p[k] for p in parts]) for k in range(len(blocks))]
    costs = stage_costs(stages_of(blocks), tuple(x.shape[1:]))
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
