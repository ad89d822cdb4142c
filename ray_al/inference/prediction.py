"""`ray-al predict RUN INPUTS` (and `ray_al.predict`): a run's newest checkpoint answers new inputs, at a
fixed exit or at the first confident one, in this process (`LocalRunner`) or through the Ray block
actors (`ActorRunner`), both walked by the one early-exit loop (exit_loop.answer).

Inputs (inputs.py) are preprocessed exactly as training did. Each answer: the class, its confidence
and the exit that gave it. `ray-al eval --thresholds` scores the early-exit trade-off here too.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_al.config import changed
from ray_al.data.preprocess import Preprocess
from ray_al.errors import ConfigError
from ray_al.inference.early_exit import Answers, ExitPolicy, LocalRunner, Stages, answer, stages_of
from ray_al.inference.inputs import read_inputs


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: object          # ray_al.config.Config
    blocks: list         # ALBlocks with the newest checkpoint's weights, on the CPU, in eval mode
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
        if batch_size < 1:  # range(0, n, 0) would raise deep inside
            raise ConfigError(f"batch size must be a positive number of inputs, got {batch_size}")
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
    """The run's newest checkpoint in this process (weights only: no optimizer), with the
    preprocessing its inputs need."""
    from ray_al.inference.weights import load_weights

    cfg, blocks, manifest = load_weights(run_dir, overrides)
    return LoadedRun(Path(run_dir), cfg, blocks, manifest, run_preprocess(run_dir, cfg))


def run_preprocess(run_dir, cfg) -> Preprocess:
    """preprocess.json, or for runs made before it existed, recomputed from the run's dataset."""
    pre = Preprocess.load(run_dir)
    if pre is None:
        from ray_al.data.datasets import load_dataset
        pre = Preprocess.of(load_dataset(cfg.data), cfg.data.image_size)
    return pre


# -- runners -----------------------------------------------------------------------------------------
class ActorRunner:
    """`Stages` in Ray block actors that load the run's checkpoint themselves: stage k is one
    ALPipeline.stage call (actor k runs f_k and b_k; exit k decodes through actors k, k-1, .., 1)."""

    def __init__(self, run: LoadedRun, overrides: list[str] | None = None):
        from ray_al.pipeline.driver import ALPipeline
        from ray_al.run.storage import open_run

        cfg, storage = open_run(run.run_dir, overrides)
        cfg = changed(cfg, {"train.trainer": "al"})  # a run trained in one process is answered by actors too
        fp = run.manifest["fingerprint"]
        self.pipeline = ALPipeline(cfg, tuple(fp["input_shape"]), fp["num_classes"], total_steps=1)
        try:
            self.pipeline.load_blocks(storage.checkpoint_uri, run.manifest)
        except BaseException:
            self.pipeline.close()
            raise
        self.n = self.pipeline.n

    def stage(self, k: int, s_prev: torch.Tensor, with_exit: bool = True):
        return self.pipeline.stage(k, s_prev, with_exit)

    def close(self) -> None:
        self.pipeline.close()


def predict_tensor(runner: Stages, x: torch.Tensor, policy: ExitPolicy, batch_size: int = 1000) -> Answers:
    """`answer` batch by batch."""
    policy.check(runner.n)
    return Answers.cat([answer(runner, x[i:i + batch_size].clone(), policy) for i in range(0, len(x), batch_size)])


def predict(run_dir: str | Path, inputs, exit: int | str = "auto", threshold: float = 0.9, measure: str = "maxprob",
            use_ray: bool = False, batch_size: int = 1000, overrides: list[str] | None = None) -> list[dict]:
    """LoadedRun.predict on the newest checkpoint of `run_dir`."""
    return load(run_dir, overrides).predict(inputs, exit, threshold, measure, use_ray, batch_size, overrides)


def answered_by(run: LoadedRun) -> str:
    """Which checkpoint answered, and how far the run was: the newest one may be the untrained step 0 of a
    run still in target-path warm-up or its first steps, or a step of a run not finished yet."""
    step = run.manifest["step"]
    if step == 0:
        return "answered by checkpoint step 0: the model before any training step (the run is still at step 0)"
    epoch, batch, epochs = run.manifest.get("epoch", 0), run.manifest.get("batch", 0), run.cfg.train.epochs
    where = f"after epoch {epoch} of {epochs}" if not batch else f"epoch {epoch + 1} of {epochs}, batch {batch}"
    return f"answered by checkpoint step {step} ({where})"


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
        try:
            Path(out).write_text(buf.getvalue())
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write ({e.strerror or e})") from None
    else:
        sys.stdout.write(buf.getvalue())


# -- the early-exit trade-off on the test split ---------------------------------------------------------
def evaluate_thresholds(run_dir: str | Path, thresholds: list[float], measure: str = "maxprob",
                        overrides: list[str] | None = None, data=None, save: bool = True) -> dict:
    """The early-exit trade-off on the run's test split (early_exit.measure_tradeoff), saved as
    `early_exit.json` in the run folder (`save=False`: the caller saves it with save_tradeoff)."""
    from ray_al.data.datasets import load_dataset
    from ray_al.inference.early_exit import measure_tradeoff

    run = load(run_dir, overrides)
    for t in thresholds:
        ExitPolicy(None, t, measure).check(run.n)
    data = data or load_dataset(run.cfg.data)
    result = {"run_dir": str(run_dir), "step": run.manifest["step"],
              **measure_tradeoff(run.blocks, data.test_x, data.test_y, thresholds, measure,
                                 run.cfg.train.eval_batch_size)}
    if save:
        save_tradeoff(run_dir, result)
    return result


def save_tradeoff(run_dir: str | Path, result: dict) -> None:
    """early_exit.json in the run folder: the run's own file, read by `ray-al report`."""
    Path(run_dir, "early_exit.json").write_text(json.dumps(result, indent=1))
