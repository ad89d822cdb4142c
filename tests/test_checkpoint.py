"""Checkpoints and exact resume, in one process (the Ray variants are in test_faults.py)."""
import json
import shutil

import pytest
import torch

from ray_al.checkpoint import files as ckpt
from ray_al.checkpoint.policy import fingerprint
from ray_al.data.datasets import load_dataset
from ray_al.errors import CheckpointError, TrainingError
from ray_al.run.factory import load_trainer
from ray_al.run.loop import train
from ray_al.run.storage import run_config
from tests.helpers import assert_states_equal, tiny_config

QUIET = dict(log=lambda line: None)


def _cfg(tmp_path, **train_over):
    return tiny_config(tmp_path, train={"trainer": "al_local", "epochs": 3, **train_over},
                       checkpoint={"enabled": True, "every_steps": 10, "keep": 50}, name="run")


def _states(result):
    return result.trainer.state_dicts()


def test_resume_from_a_mid_epoch_checkpoint_is_bitwise_exact(tmp_path):
    torch.set_num_threads(1)
    full = train(_cfg(tmp_path / "a"), keep_trainer=True, **QUIET)
    steps = ckpt.complete_checkpoints(str(full.run_dir))
    # step 0, every 10 steps rounded up to a chunk of 4 within the epoch (44 batches), epoch ends
    assert steps[:7] == [0, 12, 20, 32, 40, 44, 52] and steps[-1] == 132
    # a crash right after step 52 was saved (mid epoch 2): newer checkpoints never got their manifest
    crashed = tmp_path / "b" / "run"
    shutil.copytree(full.run_dir, crashed)
    for step in steps:
        if step > 52:
            (crashed / "checkpoints" / f"step-{step:09d}" / "manifest.json").unlink()
    lines = []
    resumed = train(run_config(crashed), resume_dir=crashed, keep_trainer=True, log=lines.append)
    assert "resumed from checkpoint step 52 (epoch 2, batch 8)" in lines
    for a, b in zip(_states(full), _states(resumed)):
        assert_states_equal(a, b)
    history = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["test_acc"] == full.final["test_acc"]


def test_keep_prunes_to_the_newest_complete(tmp_path):
    cfg = tiny_config(tmp_path, train={"trainer": "al_local", "epochs": 2},
                      checkpoint={"enabled": True, "every_steps": 8, "keep": 2})
    result = train(cfg, **QUIET)
    assert ckpt.complete_checkpoints(str(result.run_dir)) == [80, 88]
    assert len(list((result.run_dir / "checkpoints").iterdir())) == 2


def test_checkpoints_to_a_pyarrow_uri(tmp_path):
    uri = f"file://{tmp_path / 'remote'}"
    cfg = tiny_config(tmp_path / "runs", train={"trainer": "bp"}, checkpoint={"enabled": True, "uri": uri},
                      name="bp-run")
    result = train(cfg, **QUIET)
    assert ckpt.complete_checkpoints(f"{uri}/bp-run") == [0, 44]
    _, trainer, manifest = load_trainer(result.run_dir)
    data = load_dataset(cfg.data)
    assert trainer.evaluate(data.test_x, data.test_y)["test_acc"] == result.final["test_acc"]


def test_truncated_and_foreign_checkpoints_are_refused_and_kept(tmp_path):
    result = train(_cfg(tmp_path, epochs=1), **QUIET)
    newest = ckpt.complete_checkpoints(str(result.run_dir))[-1]
    block = result.run_dir / "checkpoints" / f"step-{newest:09d}" / "block-2.pt"
    size = block.stat().st_size
    block.write_bytes(block.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match="block-2.pt is damaged or truncated"):  # chosen: no fallback
        train(run_config(result.run_dir), resume_dir=result.run_dir, resume_step=newest, **QUIET)
    with pytest.raises(CheckpointError, match="checkpoint was made for model.d=32, this run has 64"):
        train(run_config(result.run_dir, ["model.d=64"]), resume_dir=result.run_dir, **QUIET)
    with pytest.raises(CheckpointError, match="checkpoint was made for kind="):
        train(run_config(result.run_dir, ["train.trainer=bp"]), resume_dir=result.run_dir, **QUIET)
    assert block.stat().st_size == size // 2  # nothing was overwritten or deleted
    assert ckpt.complete_checkpoints(str(result.run_dir))[-1] == newest


def test_nan_loss_names_block_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, epochs=3)
    data = load_dataset(cfg.data)

    def poison(record):  # after epoch 1, one training image turns NaN
        if record["epoch"] == 1:
            data.train_x[7] = float("nan")

    with pytest.raises(TrainingError, match=r"block 1: non-finite loss at step (4[5-9]|[5-8]\d)") as err:
        train(cfg, data=data, on_epoch=poison, **QUIET)
    assert "\n" not in str(err.value)
    run_dir = tmp_path / "run"
    good = ckpt.complete_checkpoints(str(run_dir))
    assert 44 in good and max(good) < int(str(err.value).rsplit(" ", 1)[1])
    manifest = ckpt.read_manifest(str(run_dir))
    state = ckpt.read_block(str(run_dir), manifest, 0)
    assert all(torch.isfinite(v).all() for v in state["block"].values())


def test_an_unwritable_checkpoint_location_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoint file") as err:
        ckpt.write_block(str(tmp_path / "a_file" / "step-000000001"), 0, {"x": torch.zeros(2)})
    assert "\n" not in str(err.value)
    cfg = tiny_config(tmp_path / "runs", train={"trainer": "al_local"},
                      checkpoint={"enabled": True, "uri": f"file://{tmp_path / 'a_file'}"})
    with pytest.raises(CheckpointError, match="cannot write checkpoint file"):
        train(cfg, **QUIET)


# -- checkpoint.uri with a query string (S3-compatible stores) ----------------------------------------
QUERY_URI = "s3://bucket/runs?endpoint_override=127.0.0.1:9&region=eu-west-3&scheme=http"


def test_a_query_string_configures_the_filesystem_and_names_are_joined_to_the_path():
    run = ckpt.location(QUERY_URI).join("run-a")
    assert run.path == "bucket/runs/run-a" and run.fs.region == "eu-west-3"
    assert run.fs.__reduce__()[1][0]["endpoint_override"] == "127.0.0.1:9"  # the query went to the filesystem
    assert ckpt.step_dir(run, 5).path == "bucket/runs/run-a/checkpoints/step-000000005"
    assert ckpt.step_dir(run, 5).parent.parent == run
    assert str(run) == "s3://bucket/runs/run-a"  # messages never show the query (it may hold credentials)
    # the old way appended the name inside the query: every run and step had the same key
    assert f"{QUERY_URI}/run-a/checkpoints".startswith("s3://bucket/runs?")


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible server (moto's) on loopback, with test credentials."""
    import logging

    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(key, value)
    host, port = server.get_host_and_port()
    uri = f"s3://ckpt/runs?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    ckpt.location(uri + "&allow_bucket_creation=true").fs.create_dir("ckpt")
    yield uri
    server.stop()


def test_two_runs_checkpoint_to_an_s3_server_through_a_query_uri_and_resume(tmp_path, s3_server):
    import pyarrow.fs as pafs

    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / "runs", train={"trainer": "bp"}, checkpoint={"enabled": True, "uri": s3_server},
                          name=name)
        train(cfg, **QUIET)
    fs = ckpt.location(s3_server).fs
    keys = {i.path for i in fs.get_file_info(pafs.FileSelector("ckpt", recursive=True)) if i.type == pafs.FileType.File}
    for name in ("a", "b"):  # each run under its own name, each step under its own folder
        assert f"ckpt/runs/{name}/checkpoints/step-000000044/manifest.json" in keys
        assert f"ckpt/runs/{name}/checkpoints/step-000000000/block-1.pt" in keys
    assert not [k for k in keys if "?" in k or "endpoint" in k]
    run_b = tmp_path / "runs" / "b"
    assert ckpt.complete_checkpoints(ckpt.location(s3_server).join("b")) == [0, 44]
    resumed = train(run_config(run_b, ["train.epochs=2"]), resume_dir=run_b, **QUIET)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    _, trainer, manifest = load_trainer(run_b)
    assert manifest["step"] == 88


def test_checkpoints_made_before_a_setting_existed_load_as_they_ran():
    """A manifest from before model.bp_baseline and optim.l2_scope: its model settings at their defaults match;
    its L2 reached every parameter, so only a run with l2_scope=all (or no L2) can load its optimizer."""
    cfg = tiny_config("unused", optim={"weight_decay": 1e-4})
    fp = fingerprint(cfg, (1, 8, 8), 10)
    old_model = {k: v for k, v in fp["model"].items() if k != "bp_baseline"}
    old = {"fingerprint": {**{k: v for k, v in fp.items() if k != "l2_scope"}, "model": old_model}}
    with pytest.raises(CheckpointError, match="checkpoint was made for l2_scope='all', this run has 'f_kernels'"):
        ckpt.check_compatible(old, fp)
    cfg.optim.l2_scope = "all"
    ckpt.check_compatible(old, fingerprint(cfg, (1, 8, 8), 10))  # as it ran: accepted
    cfg.optim.l2_scope, cfg.optim.weight_decay = "f_kernels", 0.0
    ckpt.check_compatible(old, fingerprint(cfg, (1, 8, 8), 10))  # no L2: one group either way
    cfg.model.bp_baseline = "authors"  # a setting added since, away from its default
    with pytest.raises(CheckpointError, match="checkpoint was made for model.bp_baseline='twin'"):
        ckpt.check_compatible(old, fingerprint(cfg, (1, 8, 8), 10))


def test_checkpoints_made_before_model_bridge_load_as_dense():
    """A manifest from before model.bridge ran the paper's dense bridge: a dense run loads it, a light one refuses."""
    cfg = tiny_config("unused")
    fp = fingerprint(cfg, (1, 8, 8), 10)
    assert fp["model"]["bridge"] == "dense"
    old = {"fingerprint": {**fp, "model": {k: v for k, v in fp["model"].items() if k != "bridge"}}}
    ckpt.check_compatible(old, fp)
    cfg.model.bridge = "pooled"
    with pytest.raises(CheckpointError, match="checkpoint was made for model.bridge='dense', this run has 'pooled'"):
        ckpt.check_compatible(old, fingerprint(cfg, (1, 8, 8), 10))
