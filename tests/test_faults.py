"""A block's process dies mid-run: the driver rebuilds every block from the newest checkpoint,
replays from there, and ends bitwise where an uninterrupted run ends."""
import os
import signal

import pytest
import torch

from ray_al.data.datasets import load_dataset
from ray_al.errors import TrainingError
from ray_al.run.loop import train
from tests.helpers import FaultInjector, assert_states_equal, pid_of, tiny_config


def _cfg(tmp_path, trainer, transport="object_store", **checkpoint):
    return tiny_config(tmp_path, train={"trainer": trainer, "epochs": 12, "chunk_size": 2},
                       checkpoint={"enabled": True, "every_steps": 20, **checkpoint}, name="run",
                       ray={"tensor_transport": transport})


def _kill(line):
    os.kill(pid_of(line), signal.SIGKILL)


def test_killed_block_is_rebuilt_from_checkpoint_and_ends_bitwise_equal(ray_cluster, tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(tmp_path / "ray", "al")
    fault = FaultInjector(tmp_path / "ray" / "run", after_step=100, block=2, fault=_kill)
    result = train(cfg, log=fault.log, keep_trainer=True)
    try:
        assert fault.done.is_set() and fault.error is None
        assert len(result.restarts) == 1, fault.lines
        lost_at = result.restarts[0]["step"]
        assert 100 <= lost_at < 12 * 44
        reference = train(_cfg(tmp_path / "local", "al_local"), log=lambda line: None, keep_trainer=True)
        for i, (a, b) in enumerate(zip(result.trainer.state_dicts(), reference.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")  # 0 steps lost, 0 difference
        assert [r["epoch"] for r in result.history] == list(range(1, 13))
        assert result.final["test_acc"] == reference.final["test_acc"]
        print(f"\nfault: SIGKILL block 2 after checkpoint {lost_at}; restarts 1; state diff 0")
    finally:
        result.trainer.close()


# over Gloo too: the warm-up goes through the object store, but a lost block must still end the group
@pytest.mark.parametrize("transport", ["object_store", "gloo"])
def test_block_lost_during_warmup_is_rebuilt_from_its_seed_and_warms_up_again(ray_cluster, tmp_path, transport,
                                                                              monkeypatch):
    """No checkpoint exists before warm-up ends: every block is rebuilt from (seed, index) and the
    warm-up is redone; the run still ends bitwise where one in-process run ends."""
    from ray_al.core import target_path

    torch.set_num_threads(1)
    over = dict(model={"target_warmup_steps": 300}, train={"epochs": 1, "chunk_size": 1})
    cfg = tiny_config(tmp_path / "ray", checkpoint={"enabled": True}, name="run", ray={"tensor_transport": transport},
                      **over)
    lines: list[str] = []
    killed: list[int] = []
    real_chunks = target_path.warmup_chunks

    def chunks_killing_block_2(model, num_classes, chunk_size):
        """The warm-up's own label chunks; when the driver draws chunk 40 (so at least 36 are done, at most 4
        in flight; in the second check segment), block 2's process is killed: always mid warm-up, whatever
        the machine's speed (this warm-up separates only after some 250 steps)."""
        for k, chunk in enumerate(real_chunks(model, num_classes, chunk_size)):
            if k == 40 and not killed:
                _kill(next(line for line in lines if line.startswith("block 2: node")))
                killed.append(k)
            yield chunk

    monkeypatch.setattr(target_path, "warmup_chunks", chunks_killing_block_2)
    result = train(cfg, log=lines.append, keep_trainer=True)
    try:
        assert killed == [40]
        assert result.restarts and result.restarts[0]["step"] is None, lines  # lost before step 0 was saved
        assert "rebuilt every block from its seed; warming up again" in lines
        assert sum(line.startswith("target warm-up: ") for line in lines) == 1  # the second, whole one
        reference = train(tiny_config(tmp_path / "local", train={**over["train"], "trainer": "al_local"},
                                      model=over["model"]), log=lambda line: None, keep_trainer=True)
        for i, (a, b) in enumerate(zip(result.trainer.state_dicts(), reference.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")
    finally:
        result.trainer.close()


# over Gloo, a block left waiting on its lost neighbour's tensor must not hang the run's end
@pytest.mark.parametrize("transport", ["object_store", "gloo"])
def test_restarts_are_bounded(ray_cluster, tmp_path, transport):
    cfg = _cfg(tmp_path, "al", transport, max_restarts=0)
    fault = FaultInjector(tmp_path / "run", after_step=60, block=1, fault=_kill)
    with pytest.raises(TrainingError, match=r"block lost and no restart left \(0 made\)") as err:
        train(cfg, log=fault.log)
    assert "\n" not in str(err.value)


def test_nan_in_an_actor_names_block_and_step(ray_cluster, tmp_path):
    cfg = _cfg(tmp_path, "al")
    data = load_dataset(cfg.data)
    data.train_x[3] = float("nan")
    with pytest.raises(TrainingError, match=r"^block 1: non-finite loss at step \d+$"):
        train(cfg, data=data, log=lambda line: None)
