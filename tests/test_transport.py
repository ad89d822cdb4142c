"""ray.tensor_transport: chunks between block actors over Ray Direct Transport (Gloo on CPU), bitwise
equal to al_local; auto's choice in the placement lines; CUDA transports refused without GPUs; a
lost block rebuilt with a new collective group; RDT objects freed once consumed."""
import os
import signal

import pytest
import torch

from ray_al.errors import ConfigError, TrainingError
from ray_al.pipeline.transport import resolve
from ray_al.run.loop import train
from tests.helpers import FaultInjector, assert_states_equal, pid_of, tiny_config


def _rdt_objects_held(actor) -> int:
    """Tensors an actor still holds for RDT (Ray's own store inside that process)."""
    import ray

    def count(self):
        return ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()
    return ray.get(actor.__ray_call__.remote(count))


def test_gloo_pipeline_equals_al_local_bitwise_and_frees_its_objects(ray_cluster, tmp_path):
    torch.set_num_threads(1)
    over = dict(model={"name": "mlp", "d": 32, "target_warmup_steps": 10},
                train={"epochs": 2, "chunk_size": 4})
    lines = []
    piped = train(tiny_config(tmp_path / "ray", ray={"tensor_transport": "gloo"}, **over), log=lines.append,
                  keep_trainer=True)
    local = train(tiny_config(tmp_path / "local", **{**over, "train": {**over["train"], "trainer": "al_local"}}),
                  log=lambda line: None, keep_trainer=True)
    try:
        assert "tensor transport: gloo (asked for)" in lines
        assert piped.trainer.transport == "gloo" and piped.trainer.group is not None
        for i, (a, b) in enumerate(zip(piped.trainer.state_dicts(), local.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")
        assert piped.history == [{**r, "train_time_s": p["train_time_s"], "samples_per_s": p["samples_per_s"],
                                  "run_id": p["run_id"]} for r, p in zip(local.history, piped.history)]
        # every chunk's (s, t) was fetched by the next block and freed: nothing left behind in any sender
        assert [_rdt_objects_held(a) for a in piped.trainer.actors] == [0, 0]
    finally:
        piped.trainer.close()


@pytest.mark.parametrize("transport", ["cuda_ipc", "nccl"])
def test_cuda_transports_without_gpus_are_one_line_errors(ray_cluster, tmp_path, transport):
    with pytest.raises(ConfigError, match=rf"^ray.tensor_transport={transport} moves CUDA tensors, but the blocks "
                                          r"run on the CPU \(ray.num_gpus_per_block=0\): use gloo or object_store$"):
        train(tiny_config(tmp_path, ray={"tensor_transport": transport}), log=lambda line: None)
    assert not any(tmp_path.iterdir())  # a start that failed leaves no run folder


def test_nan_over_gloo_names_block_and_step(ray_cluster, tmp_path):
    from ray_al.data.datasets import load_dataset

    cfg = tiny_config(tmp_path, ray={"tensor_transport": "gloo"})
    data = load_dataset(cfg.data)
    data.train_x[3] = float("nan")
    with pytest.raises(TrainingError, match=r"^block 1: non-finite loss at step \d+$"):
        train(cfg, data=data, log=lambda line: None)


def test_killed_block_over_gloo_is_rebuilt_with_a_new_group_and_ends_bitwise_equal(ray_cluster, tmp_path):
    torch.set_num_threads(1)

    def cfg(path, trainer):
        return tiny_config(path, train={"trainer": trainer, "epochs": 3, "chunk_size": 2},
                           checkpoint={"enabled": True, "every_steps": 20}, name="run",
                           ray={"tensor_transport": "gloo"})
    fault = FaultInjector(tmp_path / "ray" / "run", after_step=40, block=2,
                          fault=lambda line: os.kill(pid_of(line), signal.SIGKILL))
    result = train(cfg(tmp_path / "ray", "al"), log=fault.log, keep_trainer=True)
    try:
        assert fault.done.is_set() and fault.error is None and len(result.restarts) == 1, fault.lines
        assert sum(line == "tensor transport: gloo (asked for)" for line in fault.lines) == 2  # start, restart
        reference = train(cfg(tmp_path / "local", "al_local"), log=lambda line: None, keep_trainer=True)
        for i, (a, b) in enumerate(zip(result.trainer.state_dicts(), reference.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")
    finally:
        result.trainer.close()


# -- auto's choice on GPUs, from placements (what BlockActor.where() reports) --------------------------
def _gpu_blocks(*gpus, node="n1"):
    return [{"block": i + 1, "device_type": "cuda", "node": node, "gpu_ids": list(g)} for i, g in enumerate(gpus)]


def test_auto_picks_cuda_ipc_on_one_shared_gpu_nccl_on_a_gpu_each_else_the_object_store():
    assert resolve("auto", _gpu_blocks([0], [0], [0], [0]))[0] == "cuda_ipc"  # ray.num_gpus_per_block=0.25
    assert resolve("auto", _gpu_blocks([0], [1]))[0] == "nccl"  # one GPU per block
    transport, why = resolve("auto", _gpu_blocks([0], [0], [1], [1]))  # 0.5 each over two GPUs
    assert transport == "object_store" and "block 3 does not share block 2's GPU" in why
    with pytest.raises(ConfigError, match=r"^ray.tensor_transport=nccl: block 2 shares a GPU with an earlier block"):
        resolve("nccl", _gpu_blocks([0], [0]))
    with pytest.raises(ConfigError, match=r"^ray.tensor_transport=gloo carries CPU tensors"):
        resolve("gloo", _gpu_blocks([0], [1]))
