"""`ray-al export RUN --out DIR`: the prediction path and every exit as plain PyTorch programs.

DIR gets one `torch.export` program per block, `stage-k.pt2` (s_{k-1} -> (s_k, exit k's logits):
f_k, and b_k, h_k..h_1), so chaining stages 1..N computes f_1..f_N, b_N, h_N..h_1 and every exit
on the way; `meta.json` (the training preprocessing and class names) and `al_exits.py`, a copy of
ray_al/inference/exit_loop.py: the loader and the one early-exit loop, PyTorch alone. The batch
dimension is dynamic; BatchNorm is exported in eval mode.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ray_al.errors import ConfigError
from ray_al.inference.early_exit import stages_of
from ray_al.inference.exit_loop import sha256_of

LOADER = Path(__file__).with_name("exit_loop.py")  # shipped as al_exits.py


def export_run(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
               overwrite: bool = False) -> Path:
    """`overwrite`: replace an earlier export at `out` (its files are removed first, so no stage of it
    stays beside the new ones); never into a run folder or a checkpoint."""
    from ray_al.inference.prediction import load
    from ray_al.run.outputs import check_output_folder

    earlier = check_output_folder(out, is_export_file, overwrite)  # before loading: a refusal costs nothing
    run = load(run_dir, overrides)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in earlier:
            f.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: {e.strerror or e}") from None
    batch = torch.export.Dim("batch", min=1)
    s = torch.zeros(2, *run.preprocess.input_shape)
    with torch.no_grad():
        for k, stage in enumerate(stages_of(run.blocks), start=1):
            program = torch.export.export(stage, (s,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(out / f"stage-{k}.pt2"))
            s, _ = stage(s)
    shutil.copyfile(LOADER, out / "al_exits.py")
    # the loader checks these before torch.export.load, which can run code embedded in a .pt2 (pytorch#153410)
    files = [f"stage-{k}.pt2" for k in range(1, run.n + 1)] + ["al_exits.py"]
    meta = {**asdict(run.preprocess), "n_blocks": run.n, "run_dir": str(run_dir), "step": run.manifest["step"],
            "model": run.cfg.model.name, "sha256": {name: sha256_of(out / name) for name in files}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def is_export_file(name: str) -> bool:
    return name in ("meta.json", "al_exits.py") or (name.startswith("stage-") and name.endswith(".pt2"))
