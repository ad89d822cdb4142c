"""Block replicas (ray.replicas_per_block = R, ray_al/pipeline/replicas.py): R actors per block, each on a
micro-batch of B, averaging their gradients, compute AL with batch R x B (al_local with data.batch_size=R*B).

Not bitwise, within TOL: al_local's backward sums the 2B samples' gradient terms in one reduction; the
replicas sum B each and the all-reduce adds the two sums (then halves). The same real number, rounded in
another order: ~1e-7 apart after 132 steps (measured max |diff| 1.8e-7 on parameters and Adam moments).
The replicas themselves stay bitwise identical (every rank gets the same all-reduced bits).
"""
import json
import os
import re
import signal
import sys

import pytest
import torch

from ray_al.config import load_config
from ray_al.errors import ConfigError
from ray_al.run.factory import load_trainer
from ray_al.run.loop import train
from tests.helpers import (
    REPLICA_TOL,
    FaultInjector,
    assert_states_equal,
    pid_of,
    replica_placements,
    tiny_config,
)

TOL = REPLICA_TOL
B, EPOCHS = 16, 3  # digits: 1437 // 32 = 44 steps an epoch, 132 steps


def _replicated(tmp_path, **sections):
    ray = {"replicas_per_block": 2, "num_cpus_per_block": 0.5, **sections.pop("ray", {})}
    train_ = {"epochs": EPOCHS, "chunk_size": 4, **sections.pop("train", {})}
    return tiny_config(tmp_path, data={"batch_size": B}, train=train_, ray=ray, **sections)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """al_local with batch 2B: what R = 2 replicas of batch B must compute."""
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path_factory.mktemp("local"), data={"batch_size": 2 * B},
                      train={"trainer": "al_local", "epochs": EPOCHS, "chunk_size": 4})
    return train(cfg, log=lambda line: None, keep_trainer=True)


def assert_states_close(a, b, where="state"):
    """Float tensors within TOL; everything else (step counts, Adam's param groups) exactly equal."""
    assert_states_equal(a, b, where, tol=TOL)


def _assert_equals_reference(trainer, reference):
    for i, (a, b) in enumerate(zip(trainer.state_dicts(), reference.trainer.state_dicts())):
        assert_states_close(a, b, f"block {i + 1}")  # parameters, both Adams (moments, step), step count
    if hasattr(trainer, "replica_states"):
        first, *others = trainer.replica_states()
        for r, chain in enumerate(others, 1):
            for i, (a, b) in enumerate(zip(first, chain)):
                assert_states_equal(a, b, f"block {i + 1} replica {r} against replica 0")


@pytest.mark.parametrize("override, error", [
    ({"ray": {"replicas_per_block": 0}}, "ray.replicas_per_block must be positive"),
    ({"ray": {"replicas_per_block": 2}, "train": {"trainer": "al_local"}}, "needs train.trainer=al"),
    ({"ray": {"replicas_per_block": 2}, "data": {"source": "parquet", "path": "x", "loader": "ray_data"}},
     "data.loader=memory"),
])
def test_replica_settings_that_cannot_work_are_refused_in_one_line(tmp_path, override, error):
    with pytest.raises(ConfigError, match=error):
        tiny_config(tmp_path, **override)


def test_replica_micro_batches_split_every_batch_in_order_and_own_their_storage():
    from ray_al.core.batches import Chunk
    from ray_al.pipeline.replicas import merge_stats, micro_batches

    x, y = torch.randn(3, 8, 1, 2, 2), torch.arange(24).reshape(3, 8)
    parts = micro_batches(Chunk(0, x, y), 2)
    assert [torch.equal(px, x[:, r * 4:(r + 1) * 4]) and torch.equal(py, y[:, r * 4:(r + 1) * 4])
            for r, (px, py) in enumerate(parts)] == [True, True]
    assert all(px.untyped_storage().nbytes() == px.numel() * px.element_size() for px, _ in parts)
    stats = [[{"block": 1, "steps": 3, "bridge_loss": 1.0, "ae_loss": 2.0, "compute_s": 0.5}],
             [{"block": 1, "steps": 3, "bridge_loss": 3.0, "ae_loss": 4.0, "compute_s": 0.7}]]
    assert merge_stats(stats) == [{"block": 1, "steps": 3, "bridge_loss": 2.0, "ae_loss": 3.0, "compute_s": 0.7}]


def test_two_replicas_equal_al_local_with_twice_the_batch(ray_cluster, tmp_path, reference):
    lines = []
    result = train(_replicated(tmp_path), log=lines.append, keep_trainer=True)
    try:
        assert result.final["step"] == reference.final["step"] == EPOCHS * 44
        assert result.trainer.replicas == 2 and len(result.trainer.replica_states()) == 2
        _assert_equals_reference(result.trainer, reference)
        for ours, theirs in zip(result.history, reference.history):  # losses: the mean of the micro-batch means
            for key in ("b1_bridge_loss", "b2_ae_loss", "sep_dist_2"):
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        placed = replica_placements(lines)  # every actor named: `block 2 replica 1: node ..., pid ...`
        assert [(i, r) for i, r, _, _ in placed] == [(i, r) for r in (0, 1) for i in (1, 2)], lines
        assert len({pid for *_, pid in placed}) == 4
    finally:
        result.trainer.close()


def test_replica_checkpoint_resumes_with_one_replica_and_twice_the_batch(ray_cluster, tmp_path, reference):
    """Replica 0 writes one file per block; the manifest records R; the state is every replica's, so R = 2's
    checkpoint continues with R = 1 (same R x B per step) to where al_local with batch 2B ends."""
    first = train(_replicated(tmp_path, train={"epochs": 2}, checkpoint={"enabled": True}, name="run"),
                  log=lambda line: None)
    manifests = sorted(first.run_dir.rglob("manifest.json"))
    assert manifests and all(json.loads(m.read_text())["replicas_per_block"] == 2 for m in manifests)
    assert {p.name for p in manifests[-1].parent.iterdir()} >= {"block-1.pt", "block-2.pt"}
    _, loaded, _ = load_trainer(first.run_dir)  # eval, predict and export read an R = 2 run in one process
    assert loaded.state_dicts()[0]["step_count"] == 88
    one = tiny_config(tmp_path, data={"batch_size": 2 * B}, train={"epochs": EPOCHS, "chunk_size": 4},
                      checkpoint={"enabled": True}, name="run")
    resumed = train(one, log=lambda line: None, keep_trainer=True, resume_dir=first.run_dir)
    try:
        assert resumed.final["step"] == EPOCHS * 44 and not hasattr(resumed.trainer, "replica_states")
        _assert_equals_reference(resumed.trainer, reference)
    finally:
        resumed.trainer.close()


def test_lost_replica_restarts_the_run_from_its_checkpoint(ray_cluster, tmp_path, reference):
    """SIGKILL replica 1 of block 2: its peer's all-reduce fails, the run rebuilds all four actors from the
    last checkpoint and ends where al_local with batch 2B ends."""
    cfg = _replicated(tmp_path, checkpoint={"enabled": True, "every_steps": 20}, name="run")
    fault = FaultInjector(tmp_path / "run", after_step=40, block="2 replica 1",
                          fault=lambda line: os.kill(pid_of(line), signal.SIGKILL))
    result = train(cfg, log=fault.log, keep_trainer=True)
    try:
        assert fault.done.is_set() and fault.error is None
        assert len(result.restarts) == 1, fault.lines
        assert 40 <= result.restarts[0]["step"] < EPOCHS * 44
        _assert_equals_reference(result.trainer, reference)
    finally:
        result.trainer.close()


def test_embedded_default_trains_through_four_actors_with_two_replicas(ray_cluster, tmp_path):
    """`ray-al train ray.replicas_per_block=2 ray.num_cpus_per_block=0.5` (one epoch here): the embedded
    digits MLP, its 300 warm-up steps down both chains, 2 blocks x 2 replicas."""
    cfg = load_config(None, ["ray.replicas_per_block=2", "ray.num_cpus_per_block=0.5", "train.epochs=1",
                             f"run_dir={tmp_path}", "log.tensorboard=false"])
    lines = []
    result = train(cfg, log=lines.append, keep_trainer=True)
    try:
        where = [line for line in lines if ": node " in line]
        assert [(i, r) for i, r, _, _ in replica_placements(where)] == [(i, r) for r in (0, 1) for i in (1, 2)]
        assert len(replica_placements(where)) == len(where) == 4, where
        assert any(re.match(r"target warm-up: (stopped at \d+ of|ran all) 300 steps", line) for line in lines)
        assert result.final["test_acc"] > 0.5
        first, second = result.trainer.replica_states()
        for i, (a, b) in enumerate(zip(first, second)):
            assert_states_equal(a, b, f"block {i + 1}")  # warm-up and training kept the replicas identical
    finally:
        result.trainer.close()


def test_replica_left_alone_in_the_all_reduce_fails_in_one_line_within_the_timeout(ray_cluster, tmp_path):
    """Replica 0 of block 1 gets a chunk, replica 1 never does: the all-reduce waits no longer than the
    group's timeout (ray.placement_timeout_s) and the driver gets one BlockLost line, not a hang."""
    import time

    from ray_al.core.batches import epoch_chunks
    from ray_al.data.datasets import load_dataset
    from ray_al.errors import BlockLost
    from ray_al.pipeline.replicas import ReplicatedPipeline, micro_batches

    cfg = _replicated(tmp_path, ray={"placement_timeout_s": 5})
    data = load_dataset(cfg.data)
    pipe = ReplicatedPipeline(cfg, data.input_shape, data.num_classes, total_steps=10)
    try:
        chunk = next(epoch_chunks(data.train_x, data.train_y, 2 * B, 2, epoch=0, seed=0))
        _, stats = pipe.chains[0][0].train_chunk.remote(micro_batches(chunk, 2)[0])  # replica 1 never comes
        start = time.monotonic()
        with pytest.raises(BlockLost, match=r"^block 1 replica 0: gradient all-reduce failed: ") as lost:
            pipe._get(stats)
        assert time.monotonic() - start < 60 and "\n" not in str(lost.value)
    finally:
        pipe.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="interfaces are looked up on Linux only")
def test_replica_gloo_listens_on_the_interface_of_the_node_ip(monkeypatch):
    """Gloo's own pick is loopback where the hostname maps to 127.0.x.1, unreachable for replicas on other nodes
    (tests/test_hosts.py has them): the interface that holds the node's Ray IP instead, unless the user chose."""
    from ray_al.pipeline.replica_group import interface_of, use_node_interface

    assert interface_of("127.0.0.1") == "lo" and interface_of("203.0.113.254") is None
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "")  # recorded, so the value set below is undone at the end
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    use_node_interface("127.0.0.1")
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    use_node_interface("127.0.0.1")
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
