"""Load a model written by `ray-al export` with PyTorch alone (no Ray, no ray_al): this file is
copied into the export folder, so `python -c "import al_exits"` works there.

    import al_exits, numpy as np
    model = al_exits.load("exported/")
    x = model.preprocess(np.asarray(images, dtype=np.uint8))   # [n, C, H, W] or [n, H, W]
    pred, conf, exit = model.answer(x, threshold=0.9)          # first confident exit
    logits = model.exits(x)                                    # every exit's logits

Stage k (`stage-k.pt2`, a `torch.export` program) maps s_{k-1} to (s_k, exit k's logits):
s_k = f_k(s_{k-1}) and h_1(...h_k(b_k(s_k))). `meta.json` holds the preprocessing of training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch


class ExportedAL:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.stages = [torch.export.load(str(folder / f"stage-{k}.pt2")).module()
                       for k in range(1, self.meta["n_blocks"] + 1)]

    def preprocess(self, x) -> torch.Tensor:
        """Raw inputs as training saw them: uint8 pixels / 255 (floats as they are), then the
        training split's per-channel mean and std."""
        x = torch.as_tensor(x)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.ndim == 3:
            x = x[:, None]
        if self.meta["mean"] is not None:
            mean, std = (torch.tensor(self.meta[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, s = [], x
        for stage in self.stages:
            s, logits = stage(s)
            outs.append(logits)
        return outs

    @torch.no_grad()
    def answer(self, x: torch.Tensor, threshold: float = 0.9, measure: str = "maxprob"):
        """(prediction, confidence, exit) per input: the first exit whose confidence reaches the
        threshold answers, and the rows it answers run no later stage."""
        n = len(x)
        pred, conf, ex = torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.zeros(n, dtype=torch.long)
        rows, s = torch.arange(n), x
        for k, stage in enumerate(self.stages, start=1):
            s, logits = stage(s)
            p = torch.softmax(logits.float(), dim=1)
            c = p.max(dim=1).values if measure == "maxprob" else \
                1 + (p * p.clamp_min(1e-12).log()).sum(dim=1) / math.log(p.shape[1])
            done = torch.ones_like(c, dtype=torch.bool) if k == len(self.stages) else c >= threshold
            pred[rows[done]], conf[rows[done]], ex[rows[done]] = logits[done].argmax(dim=1), c[done], k
            if bool(done.all()):
                break
            rows, s = rows[~done], s[~done]
        return pred, conf, ex


def load(folder: str | Path) -> ExportedAL:
    return ExportedAL(folder)
