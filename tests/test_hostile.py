"""A hostile user's catalogue: each case is a small named function that sets up one fault and returns
the command line, the text its one-line error must hold and the exit code. The test runs it in this
process (one Ray cluster for the module) and checks the one line, the code, and that the earlier files
(a finished run, the data folders) are byte for byte as they were. RECOVERED holds the faults a run
gets through: it must say what it did, exit 0 and leave the same earlier files alone.
The existing catalogue of bad input is in test_cli.py."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_al.cli import main
from tests.helpers import CONFIGS, REPO, write_parquet

FAST = ["train.log_every_s=0", "train.threads=1"]
LOCAL = ["train.trainer=al_local", "model.d=16", *FAST]


# -- what every case may use ---------------------------------------------------------------------------
def digest(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.name != ".lock":
                h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def shard(folder: Path, split: str, labels: pa.Array, name: str = "00000-of-00001") -> None:
    """One Parquet shard of 6x6 grey images with the given label column (any type, nulls allowed)."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    cells = []
    for i in range(len(labels)):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6), i * 7 % 256, np.uint8)).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    pq.write_table(pa.table({"image": cells, "label": labels}), folder / f"{split}-{name}.parquet")


@dataclass
class Ctx:
    tmp: Path        # this case's own folder
    run: Path        # a finished al_local run (2 epochs, checkpoints at steps 0, 32, 44, 60, 88)
    data: Path       # Parquet folders made once for the module

    def copy(self) -> Path:
        """A copy of the finished run for a case that damages it (the original stays as it was)."""
        dest = self.tmp / "runs" / "copy"
        shutil.copytree(self.run, dest)
        (dest / ".lock").unlink(missing_ok=True)
        return dest

    def parquet(self, *labels, test=(0, 1, 2, 0, 1, 2)) -> Path:
        """A dataset whose train labels are `labels` (int64; None for null) and test labels `test`."""
        folder = self.tmp / "labels"
        shard(folder, "train", pa.array(list(labels), pa.int64()))
        shard(folder, "test", pa.array(list(test), pa.int64()))
        return folder

    def on(self, folder: Path, *more: str) -> list[str]:
        return ["train", *LOCAL, "data.source=parquet", f"data.path={folder}", f"data.cache_dir={self.tmp}/cache",
                "data.batch_size=2", f"run_dir={self.tmp}/runs", *more]


def newest(run: Path) -> Path:
    return max((run / "checkpoints").iterdir())


def edit_manifest(step_dir: Path, change) -> None:
    path = step_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# -- 4. validation: NaN, inf and every field ----------------------------------------------------------
def lr_nan(c):
    return ["train", "optim.lr=nan"], "optim.lr must be a finite number", 2


def lr_inf(c):
    return ["train", "optim.lr=inf"], "optim.lr must be a finite number", 2


def weight_decay_nan(c):
    return ["train", "optim.weight_decay=.nan"], "optim.weight_decay must be a finite number", 2


def cpus_per_block_nan(c):
    return ["train", "ray.num_cpus_per_block=nan"], "ray.num_cpus_per_block must be a finite number", 2


def log_interval_inf(c):
    return ["train", "train.log_every_s=-inf"], "train.log_every_s must be a finite number", 2


def placement_timeout_negative(c):
    return ["train", "ray.placement_timeout_s=-1"], "ray.placement_timeout_s must be positive", 2


def seed_of_twenty_digits(c):
    return ["train", "train.seed=12345678901234567890"], "train.seed must be in 0..99999999", 2


def seed_negative(c):
    return ["train", "train.seed=-3"], "train.seed must be in 0..99999999", 2


def fractional_gpus_above_one(c):
    return ["train", "ray.num_gpus_per_block=1.5"], "ray.num_gpus_per_block above 1 must be a whole number", 2


def custom_resource_of_zero(c):
    return ["train", "ray.block_resources={worker: 0}"], "ray.block_resources.worker must be positive", 2


def synthetic_image_of_size_zero(c):
    return ["train", "data.synthetic_shape=[1,0,8]"], "data.synthetic_shape must be 1 to 3 positive sizes", 2


def name_that_leaves_run_dir(c):
    return ["train", "name=../escaped"], "name: '../escaped' is not a plain folder name", 2


def zero_classes(c):
    return ["train", "data.num_classes=0"], "data.num_classes must be positive", 2


# -- 3. labels decide the model: checked, with the file and row -----------------------------------------
def stray_label_of_a_million(c):
    return (c.on(c.parquet(0, 1, 2, 1_000_000, 1, 0)),
            "labels run up to 1000000 (" + str(c.tmp / "labels" / "train-00000-of-00001.parquet") + " row 3)", 2)


def label_equal_to_the_class_count(c):
    return (c.on(c.parquet(0, 1, 2, 3, 1, 0), "data.num_classes=3"),
            "train-00000-of-00001.parquet row 3: label 3 is outside 0..2 (3 classes from data.num_classes=3)", 2)


def gap_in_the_labels(c):
    return c.on(c.parquet(0, 1, 3, 3, 1, 0, test=(0, 1, 3))), "value(s) below it never occur (2)", 2


def negative_label(c):
    return c.on(c.parquet(0, 1, 2, 1, -4, 0)), "train-00000-of-00001.parquet row 4: label -4 is negative", 2


def null_label(c):
    return c.on(c.parquet(0, 1, None, 1, 2, 0)), "train-00000-of-00001.parquet row 2: the label is null", 2


def nan_label(c):
    folder = c.tmp / "labels"
    shard(folder, "train", pa.array([0.0, 1.0, float("nan"), 2.0, 1.0, 0.0]))
    shard(folder, "test", pa.array([0, 1, 2], pa.int64()))
    return c.on(folder), "train-00000-of-00001.parquet row 2: the label nan is not an integer", 2


def fractional_label(c):
    folder = c.tmp / "labels"
    shard(folder, "train", pa.array([0.0, 1.0, 2.0, 2.5, 1.0, 0.0]))
    shard(folder, "test", pa.array([0, 1, 2], pa.int64()))
    return c.on(folder), "train-00000-of-00001.parquet row 3: the label 2.5 is not an integer", 2


def text_labels(c):
    folder = c.tmp / "labels"
    shard(folder, "train", pa.array(["cat", "dog"]))
    shard(folder, "test", pa.array([0, 1], pa.int64()))
    return c.on(folder), "labels must be integers, the label column holds string", 2


def empty_training_split(c):
    return c.on(c.parquet()), "the train split in", 2


def empty_test_split(c):
    return c.on(c.parquet(0, 1, 2, 0, 1, 2, test=())), "the test split in", 2


def class_count_against_the_class_names(c):
    return ["train", "data.source=synthetic", "data.num_classes=5"], \
        "data.num_classes=5 but the data names 10 classes", 2


# -- 1. run identity -------------------------------------------------------------------------------
def new_run_with_a_finished_runs_name(c):
    return ["train", *LOCAL, f"run_dir={c.run.parent}", f"name={c.run.name}"], \
        f"run folder {c.run} already holds a run", 2


def run_folder_held_by_another_process(c):
    folder = c.tmp / "runs" / "busy"
    folder.mkdir(parents=True)
    c.held = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)  # as a second ray-al process would hold it
    fcntl.flock(c.held, fcntl.LOCK_EX)
    return ["train", *LOCAL, f"run_dir={c.tmp}/runs", "name=busy"], f"{folder} is in use by another ray-al process", 2


def resume_of_a_run_in_progress(c):
    run = c.copy()
    c.held = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(c.held, fcntl.LOCK_EX)
    return ["train", "--resume", str(run)], f"{run} is in use by another ray-al process", 2


def checkpoint_location_of_another_run(c):
    (c.tmp / "store" / "twin" / "checkpoints" / "step-000000000").mkdir(parents=True)
    return ["train", *LOCAL, f"run_dir={c.tmp}/runs", "name=twin", f"checkpoint.uri=file://{c.tmp}/store"], \
        "already holds checkpoints of another run", 2


def checkpoint_location_that_cannot_be_parsed(c):
    return ["train", *LOCAL, f"run_dir={c.tmp}/runs", "checkpoint.uri=nosuchfs://bucket/x?region=1"], \
        "cannot use checkpoint location nosuchfs://bucket/x", 2


# -- 2. checkpoint consistency -------------------------------------------------------------------------
def chosen_checkpoint_with_a_hand_edited_epoch(c):
    run = c.copy()
    edit_manifest(run / "checkpoints" / "step-000000060", lambda m: m.update(epoch=0))
    return ["train", "--resume", str(run), "--step", "60"], \
        "checkpoint step 60: its position (epoch 1, batch 16) does not match 44 batches per epoch", 2


def manifest_without_a_key(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.pop("batch"))
    return ["train", "--resume", str(run), "--step", "88"], "checkpoint step 88: the manifest has no 'batch'", 2


def manifest_with_a_wrong_type(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.update(epoch="two"))
    return ["train", "--resume", str(run), "--step", "88"], "checkpoint step 88: the manifest's 'epoch' is 'two'", 2


def manifest_with_a_short_block_list(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.update(blocks=m["blocks"][:1]))
    return ["train", "--resume", str(run), "--step", "88"], "the manifest lists 1 block(s), the model has more", 2


def manifest_that_is_not_json(c):
    run = c.copy()
    (newest(run) / "manifest.json").write_text('{"step": 88, "epo')
    return ["train", "--resume", str(run), "--step", "88"], "checkpoint step 88: unreadable manifest", 2


def block_file_from_another_step(c):
    run = c.copy()
    older, step = run / "checkpoints" / "step-000000044", newest(run)
    shutil.copy(older / "block-2.pt", step / "block-2.pt")
    digest_of = hashlib.sha256((step / "block-2.pt").read_bytes()).hexdigest()
    edit_manifest(step, lambda m: m["blocks"][1].update(sha256=digest_of))
    return ["train", "--resume", str(run), "--step", "88"], \
        "checkpoint step 88: block-2.pt holds step 44, not the manifest's 88", 2


def resume_from_a_step_that_is_not_there(c):
    return ["train", "--resume", str(c.copy()), "--step", "7"], "no complete checkpoint at step 7", 2


def every_checkpoint_damaged(c):
    run = c.copy()
    for step in (run / "checkpoints").iterdir():
        (step / "block-1.pt").write_bytes(b"not a checkpoint")
    return ["train", "--resume", str(run), "train.epochs=3"], "all damaged", 2


def step_without_resume(c):
    return ["train", "--step", "3"], "--step and --allow-change go with --resume RUN_DIR", 2


# -- 8. resume and start-up ------------------------------------------------------------------------
def resume_with_another_learning_rate(c):
    return ["train", "--resume", str(c.copy()), "optim.lr=0.5"], \
        "--resume would change optim.lr from 0.001 to 0.5: add --allow-change", 2


def resume_on_another_dataset(c):
    return ["train", "--resume", str(c.copy()), "data.source=synthetic"], \
        "--resume would change data.source from 'digits' to 'synthetic'", 2


def failed_start_unknown_model(c):
    c.no_run_folder = c.tmp / "runs"
    return ["train", *FAST, "model.name=transformer", f"run_dir={c.tmp}/runs"], "unknown model 'transformer'", 2


def failed_start_bad_device(c):
    c.no_run_folder = c.tmp / "runs"
    return ["train", *LOCAL, "train.device=cuda", f"run_dir={c.tmp}/runs"], \
        "train.device=cuda but no CUDA device is available", 2


def failed_start_no_gpu_in_the_cluster(c):
    c.no_run_folder = c.tmp / "runs"
    return ["train", *FAST, "ray.num_gpus_per_block=0.5", f"run_dir={c.tmp}/runs"], \
        "ray.num_gpus_per_block=0.5 but the Ray cluster has no GPU", 2


# -- 7. the Ray Data loader never waits in silence -------------------------------------------------------
def ray_data_blocks_asking_for_every_cpu(c):
    folder = c.tmp / "stream"
    write_parquet(folder, "train", np.zeros((64, 6, 6), np.uint8), np.arange(64) % 4)
    write_parquet(folder, "test", np.zeros((8, 6, 6), np.uint8), np.arange(8) % 4)
    c.no_run_folder = c.tmp / "runs"
    c.log_holds = "waiting for resources: 2 blocks"
    return ["train", *FAST, "data.source=parquet", "data.loader=ray_data", f"data.path={folder}", "model.d=16",
            f"data.cache_dir={c.tmp}/cache", "ray.num_cpus_per_block=1", "ray.placement_timeout_s=3",
            f"run_dir={c.tmp}/runs"], "cannot place 2 blocks of {'CPU': 1.0} (PACK) within 3s", 2


# -- 9. nothing trusted that should not be, nothing overwritten, one line for the user's own code ------------
def user_module(c, name: str, source: str) -> str:
    """A module of the user's, importable in this process for the case (and forgotten after it)."""
    folder = c.tmp / "mods"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    c.undo = [*getattr(c, "undo", []), lambda: sys.path.remove(str(folder)), lambda: sys.modules.pop(name, None)]
    return name


FLOAT_DATA = """
import numpy as np
def make(nan_at=None, labels="int"):
    x = np.random.default_rng(0).random((24, 1, 6, 6)).astype(np.float32)
    y = np.arange(24) % 3 if labels == "int" else np.array(["cat", "dog", "emu"] * 8)
    if nan_at is not None:
        x[nan_at, 0, 2, 3] = np.nan
    return (x, y), (x[:6], y[:6])
"""


def on_factory(c, module: str, **args) -> list[str]:
    return ["train", *LOCAL, "data.source=python", f"data.factory={module}:make", f"run_dir={c.tmp}/runs",
            "data.factory_args=" + json.dumps(args)]


def checkpoints_copied_from_another_run(c):
    run = c.copy()  # this run's own checkpoints/ is now another run's: run.json names another id
    identity = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**identity, "run_id": "0123456789abcdef"}))
    return ["train", "--resume", str(run), "train.epochs=3"], \
        f"checkpoint step 88 was written by run {identity['run_id']}, not by this run (0123456789abcdef", 2


def manifest_with_only_its_run_id_edited(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.update(run_id="ffffffffffffffff"))
    return ["train", "--resume", str(run), "train.epochs=3"], \
        "checkpoint step 88 was written by run ffffffffffffffff", 2


def eval_of_a_checkpoint_of_another_run(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.update(run_id="ffffffffffffffff"))
    return ["eval", str(run)], "a checkpoint of another run is never loaded", 2


def eval_of_a_block_file_that_is_a_symlink_to_dev_zero(c):
    run = c.copy()
    (newest(run) / "block-1.pt").unlink()
    (newest(run) / "block-1.pt").symlink_to("/dev/zero")  # read without bound, it filled the memory
    return ["eval", str(run)], "checkpoint step 88: block-1.pt is not a regular file", 2


def eval_of_a_block_file_longer_than_its_manifest_says(c):
    run = c.copy()
    recorded = (newest(run) / "block-2.pt").stat().st_size
    with open(newest(run) / "block-2.pt", "ab") as f:
        f.write(b"\0" * 10)
    return ["eval", str(run)], \
        f"block-2.pt is damaged or truncated ({recorded + 10} bytes, the manifest records {recorded})", 2


def sweep_into_the_folder_of_an_earlier_sweep(c):
    earlier = c.tmp / "sweeps" / "earlier"
    earlier.mkdir(parents=True)
    for name in ("results.csv", "results.json", "sweep.yaml"):
        (earlier / name).write_text("an earlier sweep's\n")
    c.unchanged = [earlier]
    sweep = c.tmp / "again.yaml"
    sweep.write_text(f"param_space: {{optim.lr: {{choice: [0.001]}}}}\ntune: {{metric: test_acc}}\noutput: {earlier}\n")
    return ["tune", str(sweep)], f"output: {earlier} already holds results.csv, results.json, sweep.yaml: choose " \
        f"another output, or continue that sweep with ray-al tune --resume {earlier}", 2


def sweep_output_that_is_a_run_folder(c):
    sweep = c.tmp / "into_run.yaml"
    sweep.write_text(f"param_space: {{optim.lr: {{choice: [0.001]}}}}\ntune: {{metric: test_acc}}\noutput: {c.run}\n")
    return ["tune", str(sweep)], f"output: {c.run} is a run folder (config.yaml)", 2


def report_out_an_existing_file(c):
    out = c.tmp / "notes.md"
    out.write_text("mine\n")
    c.unchanged = [c.tmp]
    return ["report", str(c.run), "--out", str(out)], f"--out {out} is an existing file", 2


def model_too_large_for_memory(c):
    c.no_run_folder = c.tmp / "runs"
    return ["train", *LOCAL, "model.d=100000000", f"run_dir={c.tmp}/runs"], "more than this machine's", 2


def data_factory_with_string_labels(c):
    c.no_run_folder = c.tmp / "runs"
    return on_factory(c, user_module(c, "string_labels", FLOAT_DATA), labels="str"), \
        "data.factory 'string_labels:make': train labels: labels must be integers, the label column holds string", 2


def one_nan_pixel_in_training_data(c):
    c.no_run_folder = c.tmp / "runs"
    return on_factory(c, user_module(c, "nan_pixel", FLOAT_DATA), nan_at=5), \
        "data nan_pixel: train sample 5 holds a non-finite value (nan); 1 train sample(s) in all", 2


def model_module_that_exits_at_import(c):
    c.no_run_folder = c.tmp / "runs"
    module = user_module(c, "exits_at_import", "import sys\nsys.exit(7)\n")
    return ["train", *LOCAL, f"model.module={module}", f"run_dir={c.tmp}/runs"], \
        "model.module 'exits_at_import' cannot be imported: the module called sys.exit(7) while being imported", 2


def yaml_alias_bomb_under_factory_args(c):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values
    config = c.tmp / "bomb.yaml"
    config.write_text("data:\n  factory_args:\n" + "".join(f"    {line}\n" for line in levels))
    return ["train", str(config)], f"{config}: expands to more than 200,000 values", 2


def yaml_alias_bomb_in_an_override(c):
    lists = ["&l0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return ["train", f"data.factory_args={{k: [{', '.join(lists)}]}}"], \
        "override 'data.factory_args': expands to more than 200,000 values", 2


REFUSED = [
    lr_nan, lr_inf, weight_decay_nan, cpus_per_block_nan, log_interval_inf, placement_timeout_negative,
    seed_of_twenty_digits, seed_negative, fractional_gpus_above_one, custom_resource_of_zero,
    synthetic_image_of_size_zero, name_that_leaves_run_dir, zero_classes,
    stray_label_of_a_million, label_equal_to_the_class_count, gap_in_the_labels, negative_label, null_label,
    nan_label, fractional_label, text_labels, empty_training_split, empty_test_split,
    class_count_against_the_class_names,
    new_run_with_a_finished_runs_name, run_folder_held_by_another_process, resume_of_a_run_in_progress,
    checkpoint_location_of_another_run, checkpoint_location_that_cannot_be_parsed,
    chosen_checkpoint_with_a_hand_edited_epoch, manifest_without_a_key, manifest_with_a_wrong_type,
    manifest_with_a_short_block_list, manifest_that_is_not_json, block_file_from_another_step,
    resume_from_a_step_that_is_not_there, every_checkpoint_damaged, step_without_resume,
    resume_with_another_learning_rate, resume_on_another_dataset,
    failed_start_unknown_model, failed_start_bad_device, failed_start_no_gpu_in_the_cluster,
    ray_data_blocks_asking_for_every_cpu,
    checkpoints_copied_from_another_run, manifest_with_only_its_run_id_edited, eval_of_a_checkpoint_of_another_run,
    eval_of_a_block_file_that_is_a_symlink_to_dev_zero, eval_of_a_block_file_longer_than_its_manifest_says,
    sweep_into_the_folder_of_an_earlier_sweep, sweep_output_that_is_a_run_folder, report_out_an_existing_file,
    model_too_large_for_memory, data_factory_with_string_labels, one_nan_pixel_in_training_data,
    model_module_that_exits_at_import, yaml_alias_bomb_under_factory_args, yaml_alias_bomb_in_an_override,
]


# -- issue 22, inference: nothing of a run written over, inputs refused in one line, serve checked first --------
def digit_png(c) -> Path:
    """An 8x8 grey PNG, the finished run's input."""
    from PIL import Image

    path = c.tmp / "x.png"
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(path)
    return path


def npy(c, array) -> Path:
    np.save(c.tmp / "x.npy", array)
    return c.tmp / "x.npy"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_out_over_the_runs_config(c):
    return ["predict", str(c.run), str(digit_png(c)), "--out", str(c.run / "config.yaml")], \
        f"--out {c.run / 'config.yaml'} lies in a run folder ({c.run})", 2


def predict_out_over_the_runs_summary_even_with_overwrite(c):
    return ["predict", str(c.run), str(digit_png(c)), "--out", str(c.run / "summary.json"), "--overwrite"], \
        "lies in a run folder", 2


def predict_out_into_a_checkpoint(c):
    return ["predict", str(c.run), str(digit_png(c)), "--out", str(newest(c.run) / "answers.csv")], \
        f"lies in a checkpoint ({newest(c.run)})", 2


def predict_out_over_an_existing_file(c):
    (c.tmp / "mine").mkdir()
    (c.tmp / "mine" / "answers.csv").write_text("mine\n")
    c.unchanged = [c.tmp / "mine"]
    return ["predict", str(c.run), str(digit_png(c)), "--out", str(c.tmp / "mine" / "answers.csv")], \
        "answers.csv is an existing file: choose another --out, or add --overwrite", 2


def predict_out_into_a_missing_folder(c):
    return ["predict", str(c.run), str(digit_png(c)), "--out", str(c.tmp / "nowhere" / "a.csv")], \
        f"the folder {c.tmp / 'nowhere'} does not exist", 2


def export_out_into_the_run_folder_even_with_overwrite(c):
    return ["export", str(c.run), "--out", str(c.run), "--overwrite"], f"--out {c.run} is a run folder", 2


def export_out_over_an_earlier_export(c):
    earlier = c.tmp / "exported"
    earlier.mkdir()
    for name in ("stage-1.pt2", "meta.json", "al_exits.py"):
        (earlier / name).write_text("an earlier export's\n")
    c.unchanged = [earlier]
    return ["export", str(c.run), "--out", str(earlier)], \
        "already holds al_exits.py, meta.json, stage-1.pt2: choose another --out, or add --overwrite", 2


def report_out_inside_a_run_folder(c):
    return ["report", str(c.run), "--out", str(c.run / "report")], "lies in a run folder", 2


def predict_of_nan_inputs(c):
    x = np.zeros((3, 1, 8, 8), np.float32)
    x[1, 0, 2, 2] = np.nan
    return ["predict", str(c.run), str(npy(c, x))], "x.npy: input 1 holds a non-finite value (nan)", 2


def predict_of_inf_inputs_through_ray(c):
    x = np.zeros((2, 8, 8), np.float32)
    x[0, 3, 3] = -np.inf
    return ["predict", str(c.run), str(npy(c, x)), "--ray"], "input 0 holds a non-finite value (-inf)", 2


def predict_of_an_npy_of_strings(c):
    return ["predict", str(c.run), str(npy(c, np.array(["a", "b", "c"])))], \
        "inputs must be uint8 pixels or floats, got <U1", 2


def predict_of_an_npy_of_zero_rows(c):
    return ["predict", str(c.run), str(npy(c, np.zeros((0, 8, 8), np.uint8)))], "x.npy: holds no inputs", 2


def predict_of_a_parquet_of_zero_rows(c):
    shard(c.tmp / "pq", "test", pa.array([], pa.int64()))
    return ["predict", str(c.run), str(c.tmp / "pq" / "test-00000-of-00001.parquet")], "holds no inputs (0 rows)", 2


def predict_with_a_batch_size_of_zero(c):
    return ["predict", str(c.run), str(digit_png(c)), "--batch-size", "0"], \
        "--batch-size must be a positive number of inputs, got 0", 2


def predict_with_a_negative_batch_size(c):
    return ["predict", str(c.run), str(digit_png(c)), "--batch-size", "-3"], "got -3", 2


def predict_of_a_decompression_bomb(c):
    from tests.helpers import png_header

    (c.tmp / "bomb.png").write_bytes(png_header(20000, 20000))
    return ["predict", str(c.run), str(c.tmp / "bomb.png")], "bomb.png: Image size (400000000 pixels) exceeds", 2


def serve_with_a_gpu_share_on_a_cluster_without_gpus(c):
    return ["serve", str(c.run), "--port", str(free_port()), "--gpus-per-block", "0.5"], \
        "--gpus-per-block 0.5 but the Ray cluster has no GPU", 2


def serve_with_more_cpus_per_replica_than_the_cluster_has(c):
    return ["serve", str(c.run), "--port", str(free_port()), "--cpus-per-block", "4"], \
        "--cpus-per-block 4 but the Ray cluster has 2 CPU in all", 2


def serve_on_port_70000(c):
    return ["serve", str(c.run), "--port", "70000"], "--port 70000 is not a port (1..65535)", 2


def serve_on_a_port_in_use(c):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    c.undo = [taken.close]
    port = taken.getsockname()[1]
    return ["serve", str(c.run), "--port", str(port)], f"--port {port} on 127.0.0.1 cannot be used", 2


REFUSED += [
    predict_out_over_the_runs_config, predict_out_over_the_runs_summary_even_with_overwrite,
    predict_out_into_a_checkpoint, predict_out_over_an_existing_file, predict_out_into_a_missing_folder,
    export_out_into_the_run_folder_even_with_overwrite, export_out_over_an_earlier_export,
    report_out_inside_a_run_folder, predict_of_nan_inputs, predict_of_inf_inputs_through_ray,
    predict_of_an_npy_of_strings, predict_of_an_npy_of_zero_rows, predict_of_a_parquet_of_zero_rows,
    predict_with_a_batch_size_of_zero, predict_with_a_negative_batch_size, predict_of_a_decompression_bomb,
    serve_with_a_gpu_share_on_a_cluster_without_gpus, serve_with_more_cpus_per_replica_than_the_cluster_has,
    serve_on_port_70000, serve_on_a_port_in_use,
]


# -- what a run gets through, saying so ------------------------------------------------------------------
def damaged_newest_checkpoint_falls_back(c):
    run = c.copy()
    block = newest(run) / "block-1.pt"
    block.write_bytes(block.read_bytes()[:100])
    c.after = lambda: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    return ["train", "--resume", str(run)], "resuming from checkpoint step 60: the newer step 88 could not be used"


def hand_edited_newest_manifest_falls_back(c):
    run = c.copy()
    edit_manifest(newest(run), lambda m: m.update(batch=5))  # step 88 is not epoch 2, batch 5
    return ["train", "--resume", str(run)], "does not match 44 batches per epoch; trying the one before it"


def partial_last_line_of_metrics(c):
    run = c.copy()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_a')
    c.after = lambda: [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    return ["train", "--resume", str(run), "train.epochs=3"], "metrics.jsonl repaired: 1 unreadable line(s) dropped"


def metrics_line_lost_after_its_checkpoint(c):
    run = c.copy()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # the crash came between the checkpoint and the line
    c.after = lambda: [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    return ["train", "--resume", str(run), "train.epochs=3"], "epoch(s) 2 restored from checkpoints"


def resumed_mid_epoch_record_is_marked_partial(c):
    run = c.copy()
    c.after = lambda: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) \
        .get("partial") is True
    return ["train", "--resume", str(run), "--step", "60"], "resumed from checkpoint step 60 (epoch 2, batch 16)"


def resume_from_an_earlier_step_sets_later_ones_aside(c):
    run = c.copy()
    c.after = lambda: (run / "checkpoints" / "step-000000088" / "manifest.json").is_file() and any(
        p.name.startswith("manifest.superseded") for p in (run / "checkpoints" / "step-000000088").iterdir())
    return ["train", "--resume", str(run), "--step", "44"], "checkpoints after step 44 set aside"


def resume_with_a_change_allowed_records_it(c):
    run = c.copy()
    c.after = lambda: ("lr: 0.002" in (run / "config.yaml").read_text()
                       and json.loads((run / "run.json").read_text())["changes"][0]["changed"]["optim.lr"]["now"]
                       == 0.002)
    return ["train", "--resume", str(run), "--allow-change", "optim.lr=0.002", "train.epochs=3"], \
        "config changed on resume (recorded in config.yaml and run.json): optim.lr"


def corrupt_npz_cache_is_rebuilt_once(c):
    folder = c.parquet(0, 1, 2, 0, 1, 2)
    assert main(c.on(folder, "name=first")) == 0
    for cache in (c.tmp / "cache").glob("*.npz"):
        cache.write_bytes(cache.read_bytes()[:64])
    c.after = lambda: main(c.on(folder, "name=third")) == 0  # the rebuilt cache reads without a word
    return c.on(folder, "name=second"), "is unreadable (BadZipFile); decoding the shards again"


def ray_data_default_share_leaves_the_reader_cpus(c):
    folder = c.tmp / "stream"
    write_parquet(folder, "train", np.zeros((64, 6, 6), np.uint8), np.arange(64) % 4)
    write_parquet(folder, "test", np.zeros((8, 6, 6), np.uint8), np.arange(8) % 4)
    c.after = lambda: [json.loads(x)["step"] for x in (c.tmp / "runs" / "rd" / "metrics.jsonl").read_text()
                       .splitlines()] == [4]  # limit_train=32 of 64 rows, batches of 8
    return ["train", *FAST, "data.source=parquet", "data.loader=ray_data", f"data.path={folder}", "model.d=16",
            "data.batch_size=8", "data.limit_train=32", f"data.cache_dir={c.tmp}/cache", "train.chunk_size=2",
            "train.epochs=1", f"run_dir={c.tmp}/runs", "name=rd"], "train 32 rows in 1 shard(s)"


RECOVERED = [
    damaged_newest_checkpoint_falls_back, hand_edited_newest_manifest_falls_back, partial_last_line_of_metrics,
    metrics_line_lost_after_its_checkpoint, resumed_mid_epoch_record_is_marked_partial,
    resume_from_an_earlier_step_sets_later_ones_aside, resume_with_a_change_allowed_records_it,
    corrupt_npz_cache_is_rebuilt_once, ray_data_default_share_leaves_the_reader_cpus,
]


def eval_thresholds_on_a_run_that_cannot_take_early_exit_json(c):
    run = c.copy()
    (run / "early_exit.json").mkdir()  # cannot be written, even by root (a read-only run folder alike)
    return ["eval", str(run), "--thresholds", "0.5,0.9"], "early_exit.json not written in"


def predict_on_a_run_still_at_step_0_says_which_step_answered(c):
    run = c.copy()
    for step in (run / "checkpoints").iterdir():
        if step.name != "step-000000000":
            shutil.rmtree(step)
    c.after = lambda: True
    return ["predict", str(run), str(digit_png(c))], \
        "ray-al: answered by checkpoint step 0: the model before any training step (the run is still at step 0)"


RECOVERED += [eval_thresholds_on_a_run_that_cannot_take_early_exit_json,
              predict_on_a_run_still_at_step_0_says_which_step_answered]


# -- the two tests that run the catalogues -----------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", *LOCAL, "train.epochs=2", "train.chunk_size=16", "checkpoint.every_steps=20",
                 "checkpoint.keep=10", f"run_dir={root}", "name=done"]) == 0
    return root / "done"


@pytest.fixture(scope="module")
def data_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_parquet(root / "ok", "train", np.zeros((12, 6, 6), np.uint8), np.arange(12) % 3)
    write_parquet(root / "ok", "test", np.zeros((6, 6, 6), np.uint8), np.arange(6) % 3)
    return root


def _context(tmp_path, finished_run, data_folders):
    return Ctx(tmp_path, finished_run, data_folders)


@pytest.mark.parametrize("case", REFUSED, ids=lambda f: f.__name__)
def test_refused_in_one_line_and_nothing_earlier_changes(case, tmp_path, finished_run, data_folders, capsys):
    c = _context(tmp_path, finished_run, data_folders)
    argv, expected, code = case(c)
    before = digest(finished_run, data_folders, *getattr(c, "unchanged", []))
    capsys.readouterr()
    try:
        assert main(argv) == code
    finally:
        if getattr(c, "held", None) is not None:
            os.close(c.held)
        for undo in getattr(c, "undo", []):
            undo()
    out, err = capsys.readouterr()
    err = err.strip().splitlines()[-1] if err.strip() else ""
    assert err.startswith("ray-al: error: ") and "\x1b" not in err, err
    assert expected in err, err
    assert digest(finished_run, data_folders, *getattr(c, "unchanged", [])) == before
    if getattr(c, "no_run_folder", None) is not None:  # a failed start leaves no run folder behind
        assert not any(c.no_run_folder.glob("*")), list(c.no_run_folder.glob("*"))
    if getattr(c, "log_holds", None):
        assert c.log_holds in out, out[-2000:]


@pytest.mark.parametrize("case", RECOVERED, ids=lambda f: f.__name__)
def test_recovered_saying_so_and_nothing_earlier_changes(case, tmp_path, finished_run, data_folders, capsys):
    c = _context(tmp_path, finished_run, data_folders)
    argv, expected = case(c)
    before = digest(finished_run, data_folders)
    capsys.readouterr()
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert expected in out + err, (out + err)[-3000:]
    assert not [line for line in err.splitlines() if line.startswith("ray-al: error")]
    if getattr(c, "after", None):
        assert c.after()
    assert digest(finished_run, data_folders) == before


# -- identity of a finished run; the cluster config; the faults that need a process of their own ------------
def test_every_manifest_and_record_carries_the_run_id(finished_run):
    run_id = json.loads((finished_run / "run.json").read_text())["run_id"]
    assert len(run_id) == 16
    manifests = [json.loads((s / "manifest.json").read_text()) for s in (finished_run / "checkpoints").iterdir()]
    assert [m["step"] for m in sorted(manifests, key=lambda m: m["step"])] == [0, 32, 44, 60, 88]
    assert {m["run_id"] for m in manifests} == {run_id}
    assert {json.loads(x)["run_id"] for x in (finished_run / "metrics.jsonl").read_text().splitlines()} == {run_id}
    assert json.loads((finished_run / "summary.json").read_text())["run_id"] == run_id


def test_default_names_of_runs_started_in_the_same_second_differ(tmp_path):
    from ray_al.config import config_from_dict
    from ray_al.run.storage import RunStorage

    cfg = config_from_dict({"run_dir": str(tmp_path), "train": {"trainer": "al_local"}})
    first, second = RunStorage.create(cfg), RunStorage.create(cfg)
    try:
        assert first.run_dir != second.run_dir and first.run_id != second.run_id
    finally:
        first.close()
        second.close()


def test_pruning_never_deletes_a_checkpoint_written_later_than_the_one_just_written(tmp_path):
    from ray_al.checkpoint import files

    run = tmp_path / "run"

    def manifest(step, t, run_id="r1"):
        d = run / "checkpoints" / f"step-{step:09d}"
        d.mkdir(parents=True)
        m = {"run_id": run_id, "step": step, "epoch": 0, "batch": step, "time": t, "fingerprint": {}, "config": {},
             "blocks": [{"file": "block-1.pt", "sha256": "x"}]}
        (d / "manifest.json").write_text(json.dumps(m))
        return m

    manifest(10, 1.0)
    manifest(30, 50.0)            # written later (a second writer, a clock): must survive
    manifest(20, 2.0, "other")    # another run's: must survive
    manifest(5, 0.5)
    files._prune(str(run), keep=1, written=manifest(40, 3.0))
    assert files.complete_checkpoints(str(run)) == [20, 30, 40]


def test_no_cluster_config_uses_a_shared_world_writable_cache():
    import yaml

    for path in (CONFIGS / "cluster").glob("*.yaml"):
        cache = (yaml.safe_load(path.read_text()).get("data") or {}).get("cache_dir") or ""
        assert not cache.startswith(("/tmp", "/var/tmp", "/dev/shm")), path


def _cli(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "ray_al", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_actor_that_fails_in_its_constructor_reports_the_cause_in_one_line(tmp_path):
    proc = _cli("train", "ray.num_cpus=2", f"run_dir={tmp_path}", "train.epochs=1", *FAST,
                env={"RAY_AL_SLOW_BLOCK": "2:soon"})  # block 2's constructor cannot parse its delay
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ray-al: error: block 2") and "\x1b" not in last, last
    assert "could not convert string to float: 'soon'" in last
    assert "Traceback" not in proc.stderr and "creation task" not in proc.stderr
    assert not any(tmp_path.iterdir())  # the failed start left no run folder


def test_unreachable_cluster_leaves_no_run_folder(tmp_path):
    proc = _cli("train", "ray.address=127.0.0.1:1", f"run_dir={tmp_path}", *FAST)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ray-al: error: cannot reach the Ray cluster")
    assert not any(tmp_path.iterdir())



GCS_KILLED_AFTER_THE_RUN = """
import sys, time
import ray  # noqa: F401  (puts the psutil that Ray ships on the path)
import psutil
from ray_al.run import storage
from ray_al.cli import main

write_summary = storage.RunStorage.write_summary

def write_then_kill_the_gcs(self, summary):  # the run's last file is written, then the cluster dies
    write_summary(self, summary)
    for child in psutil.Process().children(recursive=True):
        if "gcs_server" in child.name():
            child.kill()
    time.sleep(1)

storage.RunStorage.write_summary = write_then_kill_the_gcs
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_gcs_killed_after_a_finished_run_does_not_turn_it_into_a_failure(tmp_path):
    script = tmp_path / "kill_gcs.py"
    script.write_text(GCS_KILLED_AFTER_THE_RUN)
    proc = subprocess.run([sys.executable, str(script), "train", "ray.num_cpus=2", "train.epochs=1", "model.d=16",
                           "checkpoint.enabled=false", f"run_dir={tmp_path}/runs", "name=r", *FAST],
                          capture_output=True, text=True, timeout=240, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the Ray cluster stopped answering at the end; the run's files are written" in proc.stderr
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["final"]["epoch"] == 1


# -- 9. issue 22: what is not a one-line refusal of a command ------------------------------------------------
def test_sixteen_bit_grey_png_is_scaled_by_its_depth_not_clipped():
    import io

    from PIL import Image

    from ray_al.data.datasets import decode_png
    from ray_al.data.images import decode_image

    wide = (np.arange(784).reshape(28, 28) * 83 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    expected = np.round(wide / 257).astype(np.uint8)  # 65535 -> 255; convert("L") clipped everything above 255
    assert np.array_equal(decode_image(buf.getvalue(), 1)[0], expected)
    assert np.array_equal(decode_image(buf.getvalue(), 3)[2], expected)  # grey to RGB alike
    assert np.array_equal(decode_png(buf.getvalue())[:, :, 0], expected)  # and a Parquet cell


def test_module_in_the_working_directory_gets_a_hint_under_the_console_script(tmp_path, monkeypatch):
    from ray_al.errors import ConfigError
    from ray_al.user_import import import_user_module

    (tmp_path / "my_models_here.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as `ray-al` runs
    with pytest.raises(ConfigError, match="my_models_here is in the working directory, which the ray-al command "
                                          "does not search: run PYTHONPATH=. ray-al"):
        import_user_module("my_models_here", "model.module 'my_models_here'")


def test_ray_num_cpus_ignored_by_a_process_that_already_joined_ray_is_said_once(ray_cluster, capsys):
    from ray_al.config import RayConfig
    from ray_al.pipeline.session import connect

    capsys.readouterr()
    connect(RayConfig(num_cpus=7))
    connect(RayConfig(num_cpus=7))
    connect(RayConfig(num_cpus=2))  # what the cluster has: nothing to say
    assert capsys.readouterr().err.splitlines() == [
        "ray-al: ray.num_cpus=7 ignored: this process already joined a Ray cluster with 2 CPUs (ray.init ran before)"]


def test_manifest_from_before_sizes_were_recorded_still_loads(finished_run, tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    (run / ".lock").unlink(missing_ok=True)
    for step in (run / "checkpoints").iterdir():
        edit_manifest(step, lambda m: [b.pop("size") for b in m["blocks"]])
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 88


def test_every_block_of_a_manifest_records_its_size(finished_run):
    for step in (finished_run / "checkpoints").iterdir():
        blocks = json.loads((step / "manifest.json").read_text())["blocks"]
        assert [b["size"] for b in blocks] == [(step / b["file"]).stat().st_size for b in blocks]


def test_tune_hands_a_trial_another_trials_checkpoint_on_record(finished_run, tmp_path):
    """PBT's exploit: the one way a run loads another run's checkpoint, recorded in its run.json."""
    from ray.tune import Checkpoint

    from ray_al.run.storage import run_config
    from ray_al.run.tune import restore_trial_folder

    trial, source = tmp_path / "trial", json.loads((finished_run / "run.json").read_text())["run_id"]
    cfg = run_config(finished_run, ["train.epochs=3"])
    assert restore_trial_folder(Checkpoint.from_directory(str(newest(finished_run))), cfg, trial) == trial
    identity = json.loads((trial / "run.json").read_text())
    assert identity["run_id"] != source and [a["run_id"] for a in identity["adopted"]] == [source]
    assert main(["train", "--resume", str(trial)]) == 0
    assert [json.loads(x)["epoch"] for x in (trial / "metrics.jsonl").read_text().splitlines()][-1] == 3


def test_a_ray_data_run_ends_within_seconds_of_its_last_line_without_progress_bars(tmp_path):
    import threading
    import time

    folder = tmp_path / "stream"
    write_parquet(folder, "train", np.zeros((64, 6, 6), np.uint8), np.arange(64) % 4)
    write_parquet(folder, "test", np.zeros((8, 6, 6), np.uint8), np.arange(8) % 4)
    proc = subprocess.Popen([sys.executable, "-m", "ray_al", "train", "ray.num_cpus=2", *FAST, "data.source=parquet",
                             "data.loader=ray_data", f"data.path={folder}", "model.d=16", "data.batch_size=8",
                             f"data.cache_dir={tmp_path}/cache", f"run_dir={tmp_path}/runs"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []  # (when, line); read beside the process: Ray's own processes may hold the pipe open longer

    def read():
        for line in proc.stdout:
            lines.append((time.monotonic(), line))

    threading.Thread(target=read, daemon=True).start()
    proc.wait(timeout=300)
    ended = time.monotonic()
    time.sleep(0.5)
    output = "".join(line for _, line in lines)
    assert proc.returncode == 0, output[-3000:]
    last = max(when for when, line in lines if line.startswith("run folder: "))
    assert ended - last < 15, f"ended {ended - last:.0f}s after its last line"
    assert "row/s" not in output and "Running Dataset" not in output and "execution finished" not in output, output


# -- 11. an export: checked before it is loaded, never mixed with an earlier one -----------------------------------
def test_a_bit_flipped_or_swapped_export_is_refused_in_one_line_before_torch_loads_it(finished_run, tmp_path,
                                                                                       monkeypatch, capsys):
    import torch

    from ray_al.errors import CheckpointError, ConfigError
    from ray_al.inference.exit_loop import load

    out = tmp_path / "exported"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    exported = load(out)
    assert exported.n == len(json.loads((out / "meta.json").read_text())["sha256"]) - 1  # the stages, al_exits.py
    with pytest.raises(ConfigError, match="inputs hold NaN or infinity"):
        exported.preprocess(np.full((1, 8, 8), np.nan, np.float32))
    (out / "stage-1.pt2").write_bytes(bytes([b ^ (i == 999) for i, b in enumerate((out / "stage-1.pt2").read_bytes())]))
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("a tampered .pt2 reached torch"))
    with pytest.raises(CheckpointError, match=r"stage-1.pt2 does not match the sha256 digest in meta.json: the "
                                              r"export is damaged or altered; not loaded$"):
        load(out)
    (out / "stage-2.pt2").unlink()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match="meta.json records no sha256 digests"):
        load(out)


def test_export_overwrite_replaces_an_earlier_export_and_keeps_the_users_files(finished_run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    for name in ("stage-9.pt2", "meta.json", "notes.txt"):
        (out / name).write_text("earlier\n")
    assert main(["export", str(finished_run), "--out", str(out), "--overwrite"]) == 0
    n = json.loads((out / "meta.json").read_text())["n_blocks"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["al_exits.py", "meta.json", "notes.txt", *[f"stage-{k}.pt2" for k in range(1, n + 1)]])
