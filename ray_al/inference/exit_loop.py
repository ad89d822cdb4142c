"""The early-exit loop, written once, over the stage API; PyTorch alone.

Stage k maps s_{k-1} to (s_k, exit k's logits). Whatever holds the stages (this process, the Ray
block actors, Serve deployments, exported programs) offers them as `Stages` (or `AsyncStages`),
and `answer` / `answer_async` carry the requests of `early_exit`, the one loop that decides which
exit answers each input.

`ray-al export` copies this file into the export folder as `al_exits.py`, where it also loads the
exported stages, so it imports neither Ray nor ray_al (ray_al's ConfigError when it is there):

    import al_exits, numpy as np
    model = al_exits.load("exported/")
    x = model.preprocess(np.asarray(images, dtype=np.uint8))   # [n, C, H, W] or [n, H, W]
    pred, conf, exit = model.answer(x, threshold=0.9)          # first confident exit
    logits = model.exits(x)                                    # every exit's logits
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Protocol

import torch
import torch.nn.functional as F

try:
    from ray_al.errors import CheckpointError as ExportError
    from ray_al.errors import ConfigError as PolicyError
except ImportError:  # al_exits.py in an export folder: PyTorch alone
    PolicyError = ExportError = ValueError

MEASURES = ("maxprob", "entropy")


def confidence(logits: torch.Tensor, measure: str = "maxprob") -> torch.Tensor:
    """maxprob: the top softmax probability; entropy: 1 - H(p) / log(C), also in [0, 1] (1: certain)."""
    p = F.softmax(logits.float(), dim=1)
    if measure == "maxprob":
        return p.max(dim=1).values
    if measure == "entropy":
        h = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
        return 1 - h / math.log(p.shape[1])
    raise PolicyError(f"unknown confidence measure '{measure}' (known: {', '.join(MEASURES)})")


@dataclass
class ExitPolicy:
    """`exit=k` answers every input at exit k; `exit=None` answers at the first exit whose confidence
    reaches `threshold`, and at the last exit otherwise."""
    exit: int | None = None
    threshold: float = 0.9
    measure: str = "maxprob"

    def check(self, n_blocks: int) -> "ExitPolicy":
        if self.exit is not None and not 1 <= self.exit <= n_blocks:
            raise PolicyError(f"exit {self.exit}: the model has exits 1..{n_blocks}")
        if not 0 <= self.threshold <= 1:
            raise PolicyError(f"threshold must be in [0, 1], got {self.threshold}")
        confidence(torch.zeros(1, 2), self.measure)  # rejects an unknown measure
        return self


@dataclass
class Answers:
    prediction: torch.Tensor   # class index per input
    confidence: torch.Tensor   # of the answering exit, by the policy's measure
    exit: torch.Tensor         # 1-based exit that answered

    @classmethod
    def cat(cls, parts: list["Answers"]) -> "Answers":
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("prediction", "confidence", "exit")))


# -- the stage API -------------------------------------------------------------------------------
class Stages(Protocol):
    n: int  # stages (blocks)

    def stage(self, k: int, s_prev: torch.Tensor, with_exit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(s_k, exit k's logits) from s_{k-1}, k 1-based; with_exit=False may skip the exit (None)."""


class AsyncStages(Protocol):
    n: int

    async def stage(self, k: int, s_prev: torch.Tensor,
                    with_exit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]: ...


Step = tuple[int, torch.Tensor, bool]  # (k, s_{k-1}, with_exit): run stage k on these rows


def early_exit(n: int, x: torch.Tensor, policy: ExitPolicy) -> Generator[Step, tuple, Answers]:
    """The loop: yields the stage to run next, is sent back its (s_k, logits), returns the Answers.
    Rows answered at exit k leave the batch, so an input answered at exit k never reaches block k+1."""
    m = len(x)
    pred, conf, ex = torch.zeros(m, dtype=torch.long), torch.zeros(m), torch.zeros(m, dtype=torch.long)
    rows, s = torch.arange(m), x
    last = policy.exit or n
    for k in range(1, last + 1):
        with_exit = policy.exit is None or k == last  # a fixed exit reads no earlier exit
        s, logits = yield k, s, with_exit
        if not with_exit:
            continue
        c = confidence(logits, policy.measure)
        done = torch.ones(len(rows), dtype=torch.bool) if k == last else c >= policy.threshold
        pred[rows[done]], conf[rows[done]], ex[rows[done]] = logits[done].argmax(dim=1).cpu(), c[done].cpu(), k
        if k == last or bool(done.all()):
            break
        rows, s = rows[~done], s[~done]
    return Answers(pred, conf, ex)


def answer(stages: Stages, x: torch.Tensor, policy: ExitPolicy) -> Answers:
    """One batch through `stages` by the rule of `early_exit`."""
    loop = early_exit(stages.n, x, policy)
    try:
        step = next(loop)
        while True:
            step = loop.send(stages.stage(*step))
    except StopIteration as finished:
        return finished.value


async def answer_async(stages: AsyncStages, x: torch.Tensor, policy: ExitPolicy) -> Answers:
    """`answer` for stages that are awaited (Serve deployments)."""
    loop = early_exit(stages.n, x, policy)
    try:
        step = next(loop)
        while True:
            step = loop.send(await stages.stage(*step))
    except StopIteration as finished:
        return finished.value


def every_exit(stages: Stages, x: torch.Tensor) -> list[torch.Tensor]:
    """Every exit's logits [exit 1, .., exit N]: all stages on every row."""
    outs, s = [], x
    for k in range(1, stages.n + 1):
        s, logits = stages.stage(k, s)
        outs.append(logits)
    return outs


# -- the exported stages (al_exits.py) ------------------------------------------------------------
class ExportedAL:
    """The stages of a `ray-al export` folder: stage-k.pt2 (torch.export) maps s_{k-1} to (s_k, exit
    k's logits); meta.json holds the preprocessing of training."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            self.meta = json.loads((folder / "meta.json").read_text())
            names = [f"stage-{k}.pt2" for k in range(1, int(self.meta["n_blocks"]) + 1)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{folder}: not a ray-al export (meta.json: {e})") from None
        check_digests(folder, self.meta, names)
        self.stages = [torch.export.load(str(folder / name)).module() for name in names]
        self.n = len(self.stages)

    def preprocess(self, x) -> torch.Tensor:
        """Raw inputs as training saw them: uint8 pixels / 255 (floats as they are), then the
        training split's per-channel mean and std."""
        x = torch.as_tensor(x)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if not bool(torch.isfinite(x).all()):  # a NaN answered class 0 with confidence nan
            raise PolicyError("inputs hold NaN or infinity: inputs must be finite numbers")
        if x.ndim == 3:
            x = x[:, None]
        if self.meta["mean"] is not None:
            mean, std = (torch.tensor(self.meta[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def stage(self, k: int, s_prev: torch.Tensor, with_exit: bool = True):
        return self.stages[k - 1](s_prev)  # the program computes exit k either way

    @torch.no_grad()
    def exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return every_exit(self, x)

    def answer(self, x: torch.Tensor, threshold: float = 0.9, measure: str = "maxprob", exit: int | None = None):
        """(prediction, confidence, exit) per input: exit `exit`, or the first exit whose confidence
        reaches the threshold; the rows it answers run no later stage."""
        ans = answer(self, x, ExitPolicy(exit, threshold, measure).check(self.n))
        return ans.prediction, ans.confidence, ans.exit


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_digests(folder: Path, meta: dict, stages: list[str]) -> None:
    """Every stage program against the digest ray-al export wrote, before torch.export.load reads it:
    torch retries a .pt2 it cannot load with weights_only=False, running code embedded in it (pytorch
    issue 153410), and a flipped bit answered all-NaN. This catches damage and a swapped file; it is no
    signature: load only exports from a trusted source (docs/serving.md)."""
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict):
        raise ExportError(f"{folder}/meta.json records no sha256 digests (an export older than them, or "
                          f"altered): export the run again")
    for name in [*stages, "al_exits.py"]:  # names of our own: a path in meta.json is never read
        path = folder / name
        if name not in recorded or not path.is_file() or sha256_of(path) != recorded[name]:
            state = "is missing" if not path.is_file() else "does not match the sha256 digest in meta.json"
            raise ExportError(f"{path} {state}: the export is damaged or altered; not loaded")


def load(folder: str | Path) -> ExportedAL:
    """The stages of an export folder, each checked against meta.json's digests before it is loaded."""
    return ExportedAL(folder)
