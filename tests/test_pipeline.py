"""The Ray pipeline computes exactly what the sequential algorithm computes (docs/design.md, "The invariant")."""
import pytest
import torch

from ray_al.core.blocks import predict_all_exits
from ray_al.data.datasets import load_dataset
from ray_al.run.loop import train
from tests.helpers import assert_states_equal, tiny_config

CASES = {
    "mlp-2-blocks": {"model": {"name": "mlp", "d": 32}},
    "cnn-4-blocks": {"model": {"name": "cnn", "d": 16}, "data": {"source": "synthetic", "synthetic_size": 384}},
    # a light bridge (model.bridge=conv1x1: a 1x1 convolution, pooling, then the dense layers)
    "cnn-4-blocks-conv1x1": {"model": {"name": "cnn", "d": 16, "bridge": "conv1x1"},
                             "data": {"source": "synthetic", "synthetic_size": 384}},
    # target-path warm-up streamed down the same chain of actors, stopping early (at 250 of 400 steps)
    # at the same separability check as in-process
    "mlp-2-blocks-warmup": {"model": {"name": "mlp", "d": 32, "target_warmup_steps": 400,
                                      "target_warmup_check_every": 10}},
    # exits read out by least squares onto the class targets, refreshed through the actors at evaluation
    "mlp-2-blocks-readout": {"model": {"name": "mlp", "d": 32, "exit_readout": "targets"}},
    # L2 on f's kernels only (optim.l2_scope=f_kernels, the default): two Adam groups in every actor
    "cnn-4-blocks-l2": {"model": {"name": "cnn", "d": 16}, "optim": {"lr": 1e-3, "weight_decay": 1e-2},
                        "data": {"source": "synthetic", "synthetic_size": 384}},
}


def _run(tmp_path, trainer, case):
    cfg = tiny_config(tmp_path, train={"trainer": trainer, "epochs": 2, "chunk_size": 4}, **CASES[case])
    return cfg, train(cfg, log=lambda line: None, keep_trainer=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_equals_sequential_reference_bitwise(ray_cluster, tmp_path, case):
    torch.set_num_threads(1)  # the actors use train.threads=1 too
    cfg, piped = _run(tmp_path / "ray", "al", case)
    _, local = _run(tmp_path / "local", "al_local", case)
    try:
        steps = piped.final["step"]
        assert steps >= 20 and cfg.train.chunk_size > 1 and piped.trainer.n >= 2
        ray_states, local_states = piped.trainer.state_dicts(), local.trainer.state_dicts()
        assert [s["step_count"] for s in ray_states] == [steps] * piped.trainer.n
        for i, (a, b) in enumerate(zip(ray_states, local_states)):
            assert_states_equal(a, b, f"block {i + 1}")  # parameters, both optimizers, step counts
        assert "sep_acc_2" in piped.history[-1]  # separability through the actors equals in-process too
        if cfg.model.target_warmup_steps:
            warm = piped.warmup["warmup_steps"]
            assert warm == local.warmup["warmup_steps"] and 0 < warm < cfg.model.target_warmup_steps
        assert piped.history == [{**r, "train_time_s": p["train_time_s"], "samples_per_s": p["samples_per_s"],
                                  "run_id": p["run_id"]} for r, p in zip(local.history, piped.history)]
    finally:
        piped.trainer.close()


@pytest.mark.parametrize("case", ["mlp-2-blocks", "mlp-2-blocks-readout"])
def test_inference_through_actors_is_the_composed_function(ray_cluster, tmp_path, case):
    cfg, piped = _run(tmp_path, "al", case)
    try:
        from ray_al.trainers.al_local import ALLocal
        local = ALLocal(cfg, (1, 8, 8), 10, total_steps=1)
        local.load_state_dicts(piped.trainer.state_dicts())
        x = load_dataset(cfg.data).test_x[:300]
        for blk in local.blocks:
            blk.eval()
        with torch.no_grad():
            composed = predict_all_exits(local.blocks, x)
        exits = list(piped.trainer.predict_exits(x, batch_size=128))
        assert len(exits) == 3  # 128 + 128 + 44
        for k in range(2):
            through_actors = torch.cat([batch[k] for batch in exits])
            assert torch.equal(through_actors, composed[k]), f"exit {k + 1}"
        s1, exit_1 = piped.trainer.stage(1, x)  # prediction's stages (predict --ray) give the same exits
        assert torch.equal(exit_1, composed[0]) and torch.equal(piped.trainer.stage(2, s1)[1], composed[1])
    finally:
        piped.trainer.close()


def test_pipeline_reports_placement_and_trains(ray_cluster, tmp_path):
    lines = []
    cfg = tiny_config(tmp_path, train={"epochs": 4}, model={"d": 256})
    result = train(cfg, log=lines.append)
    assert any(line.startswith("block 2: node") for line in lines)
    assert any(line.startswith("tensor transport: object_store (auto on CPU blocks") for line in lines)  # default
    assert any(line.startswith("block times per step: 1: ") and "; critical path: block " in line for line in lines)
    assert result.final["test_acc"] > 0.5  # digits, 4 epochs: far above chance (0.1)
    assert {"exit_1", "exit_2", "b1_bridge_loss", "b2_ae_loss"} <= set(result.final)
    assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == 4
