"""Several Ray nodes on this machine (ray.cluster_utils.Cluster): where blocks land, and that a
run spread over nodes trains bitwise the same parameters as the in-process reference."""
import time

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from ray_al.config import load_config
from ray_al.errors import ConfigError
from ray_al.pipeline.driver import ALPipeline
from ray_al.run.loop import train

WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    # the head runs the driver only; two worker nodes offer the custom resource `worker`
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(WORKERS):
        c.add_node(num_cpus=1, resources={"worker": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()


def node_ids(trainer) -> list[str]:
    return [p["node"] for p in trainer.placement]


def cfg_for(tmp_path, trainer="al", strategy="PACK", depth=2, **extra):
    overrides = [f"train.trainer={trainer}", "data.source=synthetic", "data.synthetic_size=320",
                 "data.batch_size=16", "model.name=mlp", "model.d=24", f"model.depth={depth}", "optim.lr=3e-3",
                 "train.epochs=2", "train.chunk_size=3", "train.threads=1", "train.seed=7",
                 f"ray.placement_strategy={strategy}", "ray.num_cpus_per_block=0.5",
                 "ray.block_resources={worker: 0.5}", f"run_dir={tmp_path}", f"name={trainer}-{strategy}"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def flat(state, prefix=""):
    """Every tensor of a BlockTrainer state (parameters, Adam moments), by path; not the RNG."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k2: v2 for k, v in state.items() for k2, v2 in flat(v, f"{prefix}/{k}").items()}
    return {prefix: torch.tensor(state)} if isinstance(state, (int, float)) else {}


def test_strict_spread_puts_every_block_on_its_own_worker_and_trains_bitwise(cluster, tmp_path):
    result = train(cfg_for(tmp_path, strategy="STRICT_SPREAD"), log=lambda s: None, keep_trainer=True)
    pipe = result.trainer
    try:
        ids = node_ids(pipe)
        workers = {n["NodeID"][:12] for n in ray.nodes() if n["Resources"].get("worker")}
        assert len(set(ids)) == 2 and set(ids) == workers  # distinct nodes, none of them the head
        ray_states = pipe.state_dicts()
    finally:
        pipe.close()
    local = train(cfg_for(tmp_path, trainer="al_local"), log=lambda s: None, keep_trainer=True)
    local_states = local.trainer.state_dicts()
    assert len(ray_states) == len(local_states) == 2
    for a, b in zip(ray_states, local_states):
        fa, fb = flat(a), flat(b)
        assert fa.keys() == fb.keys() and len(fa) > 10
        for key in fa:
            assert torch.equal(fa[key], fb[key]), key
    assert result.history[-1]["test_acc"] == local.history[-1]["test_acc"]


def wait_until_free(timeout=30.0):
    """Removing a placement group frees its resources a moment later; PACK is best effort and
    spreads when no node has room at that moment."""
    deadline = time.time() + timeout
    while ray.available_resources().get("worker", 0) < WORKERS and time.time() < deadline:
        time.sleep(0.1)


def test_spread_uses_both_workers_and_pack_one(cluster, tmp_path):
    for strategy, expected in (("SPREAD", 2), ("PACK", 1)):
        wait_until_free()
        pipe = ALPipeline(cfg_for(tmp_path, strategy=strategy), (1, 8, 8), 10, total_steps=1)
        try:
            assert len(set(node_ids(pipe))) == expected, (strategy, pipe.describe())
            assert "node" in pipe.describe()[0]
        finally:
            pipe.close()


def test_strict_spread_with_more_blocks_than_nodes_fails_clearly(cluster, tmp_path):
    cfg = cfg_for(tmp_path, strategy="STRICT_SPREAD", depth=3, **{"ray.placement_timeout_s": 2})
    with pytest.raises(ConfigError, match="cannot place 3 blocks"):
        ALPipeline(cfg, (1, 8, 8), 10, total_steps=1)
    assert all(p["state"] == "REMOVED" for p in placement_group_table().values())


def test_blocks_take_the_given_groups_last_bundles(cluster, tmp_path):
    # as in a Tune trial: bundle 0 is the caller's, bundles 1..N the blocks'
    pg = placement_group([{"CPU": 0.1}, {"CPU": 0.4, "worker": 0.2}, {"CPU": 0.4, "worker": 0.2}],
                         strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=30)
    try:
        pipe = ALPipeline(cfg_for(tmp_path), (1, 8, 8), 10, total_steps=1, pg=pg)
        try:
            nodes = placement_group_table(pg)["bundles_to_node_id"]
            assert node_ids(pipe) == [nodes[1][:12], nodes[2][:12]]
            assert len(placement_group_table()) == 1 + len([p for p in placement_group_table().values()
                                                            if p["state"] == "REMOVED"])
        finally:
            pipe.close()
        assert placement_group_table(pg)["state"] == "CREATED"  # not ours to remove
    finally:
        remove_placement_group(pg)
    with pytest.raises(ConfigError, match="has 1 bundle"):
        small = placement_group([{"CPU": 0.1}])
        ray.get(small.ready(), timeout=30)
        try:
            ALPipeline(cfg_for(tmp_path), (1, 8, 8), 10, total_steps=1, pg=small)
        finally:
            remove_placement_group(small)


def test_block_replicas_spread_over_two_nodes_train_as_twice_the_batch(cluster, tmp_path):
    """ray.replicas_per_block=2 with SPREAD: a block's replicas (adjacent bundles) on the two workers, their
    all-reduce between nodes; equal to al_local with batch 2B within tests/test_replicas.py's tolerance."""
    from tests.test_replicas import assert_states_close

    wait_until_free()
    cfg = cfg_for(tmp_path, strategy="SPREAD", **{"ray.replicas_per_block": 2, "ray.num_cpus_per_block": 0.25,
                                                  "ray.block_resources": "{worker: 0.25}"})
    result = train(cfg, log=lambda s: None, keep_trainer=True)
    pipe = result.trainer
    try:
        by_block = {}
        for p in pipe.placement:
            by_block.setdefault(p["block"], set()).add(p["node"])
        assert any(len(nodes) == 2 for nodes in by_block.values()), pipe.describe()
        ray_states = pipe.state_dicts()
    finally:
        pipe.close()
    local = train(cfg_for(tmp_path, trainer="al_local", **{"data.batch_size": 32}), log=lambda s: None,
                  keep_trainer=True)
    for i, (a, b) in enumerate(zip(ray_states, local.trainer.state_dicts())):
        assert_states_close(a, b, f"block {i + 1}")
