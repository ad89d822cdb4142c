"""`ray-al predict RUN INPUTS` (and `ray_al.predict`): a run's newest checkpoint answers new inputs, at a
fixed exit or at the first confident one, in this process or through the Ray block actors.

Inputs: image files (PNG, JPEG, ...), folders of them, `.npy` arrays ([n, C, H, W], [n, H, W] or
one [C, H, W]) and Parquet files in the datasets' layout (an `image` column of PNG bytes). They
are preprocessed exactly as training did (`preprocess.json` in the run folder: the training
split's per-channel mean and std, the resize of `data.image_size`). Each answer: the class, its
confidence and the exit that gave it.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ray_al.data.images import IMAGE_SUFFIXES, decode_image
from ray_al.data.preprocess import Preprocess
from ray_al.errors import CheckpointError, DataError
from ray_al.inference.early_exit import Answers, ExitPolicy, LocalRunner, answer, stages_of


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: object          # ray_al.config.Config
    blocks: list         # ALBlocks with the newest checkpoint's weights, on the CPU
    manifest: dict
    preprocess: Preprocess

    @property
    def n(self) -> int:
        return len(self.blocks)

    def predict(self, inputs, exit: int | str = "auto", threshold: float = 0.9, measure: str = "maxprob",
                use_ray: bool = False, batch_size: int = 1000, overrides: list[str] | None = None) -> list[dict]:
        """Answers for `inputs` (paths, or an array of raw inputs): one dict per input with `input`,
        `prediction` (class index), `class` (its name), `confidence` and `exit`. `use_ray`: through
        Ray block actors that load the checkpoint themselves, instead of this process."""
        names, x = read_inputs(inputs, self.preprocess)
        policy = ExitPolicy(None if exit == "auto" else int(exit), threshold, measure).check(self.n)
        runner = ActorRunner(self, overrides) if use_ray else LocalRunner(stages_of(self.blocks))
        try:
            ans = predict_tensor(runner, x, policy, batch_size)
        finally:
            if use_ray:
                runner.close()
        return rows(names, ans, self.preprocess)


def load(run_dir: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """The run's newest checkpoint in this process, with the preprocessing its inputs need."""
    from ray_al.run.factory import load_trainer

    cfg, trainer, manifest = load_trainer(run_dir, overrides, device="cpu")
    if not hasattr(trainer, "blocks"):
        raise CheckpointError(f"{run_dir} is a {cfg.train.trainer} run: prediction by exit needs an AL run "
                              f"(train.trainer=al or al_local)")
    return LoadedRun(Path(run_dir), cfg, trainer.blocks, manifest, run_preprocess(run_dir, cfg))


def run_preprocess(run_dir, cfg) -> Preprocess:
    """preprocess.json, or for runs made before it existed, recomputed from the run's dataset."""
    pre = Preprocess.load(run_dir)
    if pre is None:
        from ray_al.data.datasets import load_dataset
        pre = Preprocess.of(load_dataset(cfg.data), cfg.data.image_size)
    return pre


# -- inputs ------------------------------------------------------------------------------------------
def read_inputs(items, pre: Preprocess) -> tuple[list[str], torch.Tensor]:
    """Paths (files, folders, .npy, .parquet) or an array/tensor of raw inputs -> (names, model inputs)."""
    if isinstance(items, (np.ndarray, torch.Tensor)):
        x = pre(items)
        return [str(i) for i in range(len(x))], x
    names, arrays = [], []
    for item in [items] if isinstance(items, (str, Path)) else items:
        for name, x in _read_path(Path(item), pre):
            names += name
            arrays.append(x)
    if not arrays:
        raise DataError("no inputs given")
    return names, torch.cat(arrays)


def image_args(pre: Preprocess) -> tuple:
    """decode_image's (channels, size, resize) for the model: the run's resize, or its input size exactly."""
    size = pre.image_size or pre.input_shape[1:]
    return pre.input_shape[0], tuple(size), pre.image_size is not None


def _read_path(path: Path, pre: Preprocess):
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files in this folder")
        for f in files:
            yield from _read_path(f, pre)
        return
    if not path.is_file():
        raise DataError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        yield [str(path)], pre(decode_image(path.read_bytes(), *image_args(pre), name=str(path))[None])
    elif suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        x = pre(x)
        yield [f"{path}[{i}]" for i in range(len(x))], x
    elif suffix == ".parquet":
        yield _read_parquet(path, pre)
    else:
        raise DataError(f"{path}: not an image, folder, .npy or .parquet input")


def _read_parquet(path: Path, pre: Preprocess):
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file or a missing column
        raise DataError(f"{path}: cannot read an 'image' column ({str(e).splitlines()[0]})") from None
    images = [decode_image(cell["bytes"] if isinstance(cell, dict) else cell, *image_args(pre),
                           name=f"{path}[{i}]") for i, cell in enumerate(column)]
    return [f"{path}[{i}]" for i in range(len(images))], pre(np.stack(images))


# -- runners -----------------------------------------------------------------------------------------
class ActorRunner:
    """The run's blocks in Ray block actors, each loading its own checkpoint file: actor k runs f_k
    (and b_k); exit k decodes through actors k, k-1, .., 1, each applying its own h."""

    def __init__(self, run: LoadedRun, overrides: list[str] | None = None):
        from ray_al.pipeline.driver import ALPipeline
        from ray_al.run.storage import open_run

        cfg, storage = open_run(run.run_dir, overrides)
        cfg.train.trainer = "al"
        fp = run.manifest["fingerprint"]
        self.pipeline = ALPipeline(cfg, tuple(fp["input_shape"]), fp["num_classes"], total_steps=1)
        try:
            self.pipeline.load_blocks(storage.checkpoint_uri, run.manifest)
        except BaseException:
            self.pipeline.close()
            raise
        self.actors, self.n, self._bridged = self.pipeline.actors, self.pipeline.n, None

    def forward(self, k: int, s: torch.Tensor) -> torch.Tensor:
        s_ref, self._bridged = self.actors[k - 1].infer.remote(s)
        return self.pipeline._get(s_ref)

    def exit_logits(self, k: int, s: torch.Tensor) -> torch.Tensor:
        t = self._bridged  # b_k(s_k), computed by actor k beside s_k
        for actor in reversed(self.actors[:k]):
            t = actor.decode_one.remote(t)  # refs chain from actor to actor without the driver
        return self.pipeline._get(t)

    def close(self) -> None:
        self.pipeline.close()


def predict_tensor(runner, x: torch.Tensor, policy: ExitPolicy, batch_size: int = 1000) -> Answers:
    policy.check(runner.n)
    return Answers.cat([answer(runner, x[i:i + batch_size].clone(), policy) for i in range(0, len(x), batch_size)])


def predict(run_dir: str | Path, inputs, exit: int | str = "auto", threshold: float = 0.9, measure: str = "maxprob",
            use_ray: bool = False, batch_size: int = 1000, overrides: list[str] | None = None) -> list[dict]:
    """LoadedRun.predict on the newest checkpoint of `run_dir`."""
    return load(run_dir, overrides).predict(inputs, exit, threshold, measure, use_ray, batch_size, overrides)


def rows(names: list[str], ans: Answers, pre: Preprocess) -> list[dict]:
    return [{"input": name, "prediction": int(p), "class": pre.label(int(p)), "confidence": round(float(c), 6),
             "exit": int(e)} for name, p, c, e in zip(names, ans.prediction, ans.confidence, ans.exit)]


def write(records: list[dict], out: str | None, fmt: str | None = None) -> None:
    """CSV or JSON (by `fmt`, else by the suffix of `out`, else CSV) to `out` or stdout."""
    fmt = fmt or ("json" if out and out.endswith(".json") else "csv")
    buf = io.StringIO()
    if fmt == "json":
        buf.write(json.dumps(records, indent=1) + "\n")
    else:
        w = csv.DictWriter(buf, fieldnames=["input", "prediction", "class", "confidence", "exit"])
        w.writeheader()
        w.writerows(records)
    if out:
        Path(out).write_text(buf.getvalue())
    else:
        sys.stdout.write(buf.getvalue())


# -- the early-exit trade-off on the test split ---------------------------------------------------------
def evaluate_thresholds(run_dir: str | Path, thresholds: list[float], measure: str = "maxprob",
                        overrides: list[str] | None = None, data=None) -> dict:
    """The early-exit trade-off on the run's test split (early_exit.measure_tradeoff), saved as
    `early_exit.json` in the run folder."""
    from ray_al.data.datasets import load_dataset
    from ray_al.inference.early_exit import measure_tradeoff

    run = load(run_dir, overrides)
    ExitPolicy(None, max(thresholds), measure).check(run.n)
    data = data or load_dataset(run.cfg.data)
    result = {"run_dir": str(run_dir), "step": run.manifest["step"],
              **measure_tradeoff(run.blocks, data.test_x, data.test_y, thresholds, measure,
                                 run.cfg.train.eval_batch_size)}
    Path(run_dir, "early_exit.json").write_text(json.dumps(result, indent=1))
    return result
