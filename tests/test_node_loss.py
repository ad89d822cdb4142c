"""Removing the node that hosts a block mid-run: the same recovery, on the remaining nodes."""
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from ray_al.run.loop import train
from tests.helpers import FaultInjector, assert_states_equal, node_of, tiny_config


@pytest.fixture(scope="module")
def three_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_node_loss_recovers_on_the_remaining_nodes(three_nodes, tmp_path):
    cluster, workers = three_nodes
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path / "ray", train={"trainer": "al", "epochs": 10, "chunk_size": 2},
                      ray={"placement_strategy": "STRICT_SPREAD", "num_cpus_per_block": 1},
                      checkpoint={"enabled": True, "every_steps": 20}, name="run")
    removed = []

    def remove_node_of_a_block(_line):
        lines = [ln for ln in fault.lines if ln.startswith("block ") and ": node " in ln]
        for node in workers:  # a block on a worker node (the head also runs the driver)
            if node not in removed and any(node.node_id.startswith(node_of(ln)) for ln in lines):
                cluster.remove_node(node)
                removed.append(node)
                return

    fault = FaultInjector(tmp_path / "ray" / "run", after_step=100, block=1, fault=remove_node_of_a_block)
    result = train(cfg, log=fault.log, keep_trainer=True)
    try:
        assert removed and fault.error is None and len(result.restarts) == 1, fault.lines
        nodes_after = {p["node"] for p in result.trainer.placement}
        assert len(nodes_after) == 2 and not any(removed[0].node_id.startswith(n) for n in nodes_after)
        reference = train(tiny_config(tmp_path / "local", train={"trainer": "al_local", "epochs": 10, "chunk_size": 2}),
                          log=lambda line: None, keep_trainer=True)
        for i, (a, b) in enumerate(zip(result.trainer.state_dicts(), reference.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")
        print(f"\nnode loss: removed {removed[0].node_id[:12]} after checkpoint {result.restarts[0]['step']}; "
              f"restarts 1; blocks now on {sorted(nodes_after)}; state diff 0")
    finally:
        result.trainer.close()
