"""A model registered in the user's own module, outside the package, trained through real Ray
block actors; start-up failures in one line; predictions through the actors equal those in this
process."""
import pytest
import torch

from ray_al.api import train
from ray_al.errors import ConfigError
from ray_al.inference.prediction import load
from tests.helpers import tiny_config, write_user_models

QUIET = dict(log=lambda line: None)


@pytest.fixture(scope="module")
def user_cluster(tmp_path_factory):
    """A real local Ray cluster whose job ships one user module (my_user_models.py) to every worker
    through `ray.runtime_env`; a second module (unshipped_models.py) is on this process's path only."""
    import ray

    from ray_al.config import RayConfig
    from ray_al.pipeline.session import connect

    shipped = write_user_models(tmp_path_factory.mktemp("shipped"), "my_user_models")
    local_only = write_user_models(tmp_path_factory.mktemp("local"), "unshipped_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(shipped.parent))
        mp.syspath_prepend(str(local_only.parent))
        connect(RayConfig(num_cpus=2, runtime_env={"py_modules": [str(shipped)]}))
        yield
        ray.shutdown()


def _cfg(tmp_path, module):
    return tiny_config(tmp_path, model={"name": "user_bn_mlp", "module": module, "d": 32}, optim={"lr": 1e-2},
                       train={"trainer": "al", "epochs": 3}, checkpoint={"enabled": True})


@pytest.fixture(scope="module")
def trained(user_cluster, tmp_path_factory):
    return train(_cfg(tmp_path_factory.mktemp("runs"), "my_user_models"), **QUIET)


def test_user_model_trains_through_ray_actors(trained):
    assert [r["epoch"] for r in trained.history] == [1, 2, 3]
    assert trained.final["exit_1"] > 0.5 and trained.final["exit_2"] > 0.5  # 10 classes: chance is 0.1
    assert "module: my_user_models" in (trained.run_dir / "config.yaml").read_text()


def test_actor_that_cannot_import_the_module_fails_in_one_line(user_cluster, tmp_path, capfd):
    with pytest.raises(ConfigError) as e:  # importable here, but not shipped: the actors lack it
        train(_cfg(tmp_path, "unshipped_models"), **QUIET)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("block 1 could not start: model.module 'unshipped_models' cannot be imported: "
                              "ModuleNotFoundError"), message
    assert "Traceback" not in capfd.readouterr().err  # no actor traceback printed either


def test_model_registered_in_the_running_script_is_refused_for_actors(tmp_path):
    from ray_al.models.registry import _BUILDERS, Architecture

    def script_model(input_shape, num_classes, act, d=8):
        return Architecture([torch.nn.Flatten()], d)
    script_model.__module__ = "__main__"
    _BUILDERS["script_model"] = script_model
    try:
        with pytest.raises(ConfigError, match="registered in the running script"):
            train(tiny_config(tmp_path, model={"name": "script_model"}), **QUIET)
    finally:
        del _BUILDERS["script_model"]


def test_predictions_through_actors_equal_in_process(trained):
    """Fixed exits and the first confident exit: the same answers, bit for bit, from Ray block actors
    that load the checkpoint themselves as from the blocks in this process."""
    from ray_al.data.datasets import load_dataset
    from ray_al.inference.early_exit import ExitPolicy, LocalRunner, stages_of
    from ray_al.inference.prediction import ActorRunner, predict_tensor, read_inputs, rows

    torch.set_num_threads(1)  # as the actors (train.threads=1): the same arithmetic
    run = load(trained.run_dir)
    raw = load_dataset(run.cfg.data.__class__(normalize=False)).test_x[:200]  # floats as they are
    names, x = read_inputs((raw * 255).round().to(torch.uint8), run.preprocess)
    actors, local = ActorRunner(run), LocalRunner(stages_of(run.blocks))
    try:
        for policy in (ExitPolicy(None, 0.5), ExitPolicy(1), ExitPolicy(2), ExitPolicy(None, 0.3, "entropy")):
            here = rows(names, predict_tensor(local, x, policy, batch_size=64), run.preprocess)
            there = rows(names, predict_tensor(actors, x, policy, batch_size=64), run.preprocess)
            assert here == there, policy
            exits = {r["exit"] for r in here}
            assert exits == ({1, 2} if policy.exit is None else {policy.exit}), policy
    finally:
        actors.close()
