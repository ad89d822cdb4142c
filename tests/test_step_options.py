"""Step options (ray_al/core/step_options.py) on the CPU: bf16 autocast, foreach and fused Adam, channels_last
and torch.compile train with finite losses in al_local and the BP twin; bf16 and channels_last through
block actors over Gloo equal al_local bitwise; CUDA-only options asked for on a CPU are one-line errors."""
import pytest
import torch

from ray_al.errors import ConfigError
from ray_al.run.loop import train
from tests.helpers import assert_states_equal, tiny_config

CNN = dict(model={"name": "cnn", "d": 16}, data={"source": "synthetic", "synthetic_size": 128})
SHOWN = {"precision": "bf16", "adam": "adam=", "channels_last": "channels_last", "compile": "compile=on"}


def _finite_losses(record) -> bool:
    losses = [v for k, v in record.items() if k.endswith("loss")]
    return bool(losses) and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("trainer", ["al_local", "bp"])
@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"adam": "foreach"}, {"adam": "fused"},
                                     {"channels_last": True, "precision": "bf16"}])
def test_cpu_step_options_train_with_finite_losses(tmp_path, trainer, options):
    torch.set_num_threads(1)
    lines = []
    result = train(tiny_config(tmp_path, train={"trainer": trainer, **options},
                               **(CNN if options.get("channels_last") else {})), log=lines.append, keep_trainer=True)
    assert _finite_losses(result.final), result.final
    where = next(line for line in lines if " in this process on " in line)
    assert all(SHOWN[key] in where for key in options), where  # the start-up line names what is on
    if trainer == "al_local" and options.get("precision") == "bf16":  # block 1 hands bf16 activations on
        s, t, stats = result.trainer.trainers[0].train_chunk(torch.randn(1, 4, 1, 8, 8), torch.zeros(1, 4).long())
        assert s.dtype == torch.bfloat16 and stats["compute_s"] > 0


def test_compile_trains_the_bp_twin_like_eager(tmp_path):
    """torch.compile changes how the step runs, not what it computes (up to float reassociation)."""
    torch.set_num_threads(1)
    over = dict(data={"limit_train": 320}, model={"d": 16})
    eager = train(tiny_config(tmp_path / "eager", train={"trainer": "bp"}, **over), log=lambda line: None)
    lines = []
    compiled = train(tiny_config(tmp_path / "compiled", train={"trainer": "bp", "compile": "on"}, **over),
                     log=lines.append)
    assert any("in this process on cpu" in line and "compile=on" in line for line in lines)
    assert compiled.final["b1_loss"] == pytest.approx(eager.final["b1_loss"], rel=1e-4)


@pytest.mark.parametrize("trainer", ["al_local", "bp"])
@pytest.mark.parametrize("option,message", [
    ({"compile": "cuda_graphs"}, "train.compile=cuda_graphs needs a CUDA device, but this step runs on cpu"),
    ({"pin_memory": True}, "train.pin_memory=true needs a CUDA device, but this step runs on cpu")])
def test_cuda_only_options_on_cpu_are_one_line_errors(tmp_path, trainer, option, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        train(tiny_config(tmp_path, train={"trainer": trainer, "device": "cpu", **option}), log=lambda line: None)


def test_cuda_only_option_for_cpu_block_actors_is_refused_before_they_start(ray_cluster, tmp_path):
    with pytest.raises(ConfigError, match=r"^train.pin_memory=true needs a CUDA device, but this step runs on cpu$"):
        train(tiny_config(tmp_path, train={"pin_memory": True}), log=lambda line: None)


def test_bf16_channels_last_cnn_through_block_actors_over_gloo_equals_al_local_bitwise(ray_cluster, tmp_path):
    """4 conv blocks: bf16 activations in NHWC layout hop over Gloo (made contiguous: RDT sends no other)."""
    torch.set_num_threads(1)
    options = {"precision": "bf16", "channels_last": True}
    piped = train(tiny_config(tmp_path / "ray", train=options, ray={"tensor_transport": "gloo"}, **CNN),
                  log=lambda line: None, keep_trainer=True)
    local = train(tiny_config(tmp_path / "local", train={**options, "trainer": "al_local"}, **CNN),
                  log=lambda line: None, keep_trainer=True)
    try:
        assert _finite_losses(piped.final) and piped.trainer.n == 4
        for i, (a, b) in enumerate(zip(piped.trainer.state_dicts(), local.trainer.state_dicts())):
            assert_states_equal(a, b, f"block {i + 1}")
    finally:
        piped.trainer.close()
