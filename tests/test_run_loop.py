"""The run loop's hooks (no Ray: al_local): `on_steps` runs at step 0 and at the chunk that crosses each
multiple of `every_steps`, leaves the arithmetic alone, and checkpoints still fall where they did; the epoch record's
keys are read back by the one record module."""
from ray_al.checkpoint.files import complete_checkpoints
from ray_al.core import record as rec
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import Hooks, train
from tests.helpers import assert_states_equal, tiny_config

QUIET = {"log": lambda line: None}


def test_on_steps_runs_at_every_multiple_and_changes_nothing(tmp_path):
    def cfg(name):
        return tiny_config(tmp_path / name, train={"trainer": "al_local", "epochs": 2},
                           checkpoint={"enabled": True, "every_steps": 12})

    data = load_dataset(cfg("a").data)
    probe, seen = (data.test_x[:64], data.test_y[:64]), []
    plain = train(cfg("a"), keep_trainer=True, **QUIET)
    hooked = train(cfg("b"), keep_trainer=True, **QUIET,
                   hooks=Hooks(every_steps=10, on_steps=lambda tr, step: seen.append((step, tr.evaluate(*probe)))))
    try:
        n, k = plain.final["step"] // 2, 4  # batches per epoch, chunk size
        ends = [e * n + min(b + k, n) for e in range(2) for b in range(0, n, k)]
        starts = [e * n + b for e in range(2) for b in range(0, n, k)]
        assert [s for s, _ in seen] == [0] + [end for b, end in zip(starts, ends) if end // 10 > b // 10]
        assert all(0.0 <= accs["test_acc"] <= 1.0 for _, accs in seen)
        # evaluating between chunks changes neither the arithmetic nor where checkpoints fall
        assert_states_equal(plain.trainer.state_dicts(), hooked.trainer.state_dicts(), "blocks")
        assert rec.exits(hooked.final) == rec.exits(plain.final)
        assert complete_checkpoints(str(hooked.run_dir)) == complete_checkpoints(str(plain.run_dir))
    finally:
        plain.trainer.close()
        hooked.trainer.close()


def test_record_keys_round_trip():
    r = {rec.exit_key(2): 0.5, rec.exit_key(1): 0.25, rec.exit_key(10): 0.75, rec.last_exit_key(): 0.75,
         rec.exit_key(1, "val"): 0.1, rec.sep_acc_key(3): 1.0, rec.sep_acc_key(1): 0.5,
         rec.loss_key(1, "bridge_loss"): 0.2, "epoch": 1}
    assert list(rec.exits(r)) == [1, 2, 10] and rec.exits(r, "val") == {1: 0.1}
    assert rec.separability(r) == {1: 0.5, 3: 1.0}
    assert rec.losses(r) == {"b1_bridge_loss": 0.2}
    sums = rec.LossSums()
    sums.add([{"block": 1, "steps": 2, "bridge_loss": 1.0}, {"block": 2, "steps": 2, "ae_loss": 3.0}])
    sums.add([{"block": 1, "steps": 4, "bridge_loss": 4.0}, {"block": 2, "steps": 4, "ae_loss": 0.0}])
    assert sums.steps == 6 and sums.mean() == {"b1_bridge_loss": 3.0, "b2_ae_loss": 1.0}


def test_early_stopping_ends_the_run_and_says_why(tmp_path):
    import pytest

    import ray_al
    from ray_al.errors import ConfigError

    stop = ray_al.EarlyStopping("val_acc", patience=1, min_delta=1.0)  # nothing improves by a whole point
    lines = []
    cfg = tiny_config(tmp_path, train={"trainer": "al_local", "epochs": 4}, data={"val_fraction": 0.2})
    result = ray_al.train(cfg, log=lines.append, callbacks=[stop])
    assert [r["epoch"] for r in result.history] == [1, 2]  # epoch 1 sets the best, epoch 2 fails to beat it
    assert result.stopped_early.startswith("val_acc has not improved for 1 epoch(s)")
    assert any(line.startswith("stopped after epoch 2 of 4: val_acc") for line in lines)
    with pytest.raises(ConfigError, match="needs data.val_fraction"):
        ray_al.train(tiny_config(tmp_path / "b", train={"trainer": "al_local"}), log=lines.append,
                     callbacks=[ray_al.EarlyStopping("val_acc")])
