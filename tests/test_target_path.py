"""The target path alone: warm-up, the separability metric, and the paper's arithmetic untouched."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from ray_al.checkpoint import files as ckpt
from ray_al.config import config_from_dict, load_config
from ray_al.core.blocks import decode_to_logits
from ray_al.core.target_path import class_points, format_separability, separability, warm_up, warmup_chunks
from ray_al.errors import ConfigError
from ray_al.run.loop import train
from ray_al.run.progress import format_record
from ray_al.run.storage import run_config
from ray_al.trainers.al_local import ALLocal
from tests.helpers import REPO, assert_states_equal, tiny_config

QUIET = dict(log=lambda line: None)


def _target_path(classes, d, depth, **model):
    cfg = config_from_dict({"data": {"source": "synthetic", "synthetic_shape": [1, 2, 2], "synthetic_classes": classes},
                            "model": {"name": "mlp", "d": d, "depth": depth, **model}, "train": {"threads": 1}})
    return cfg, ALLocal(cfg, (1, 2, 2), classes, total_steps=1)


# -- the metric ------------------------------------------------------------------------------
def test_separability_of_known_targets():
    eye = torch.eye(4)
    same = torch.full((4, 3), 0.5)
    out = separability([eye, same], [eye * 5, torch.zeros(4, 4)])
    assert out["sep_dist_1"] == pytest.approx(2 ** 0.5)  # one-hots: every pair sqrt(2) apart
    assert out["sep_acc_1"] == 1.0
    assert out["sep_dist_2"] == 0.0  # all classes on one point
    assert out["sep_acc_2"] == 0.25  # argmax of equal logits is class 0: 1 of 4, chance
    assert format_separability(out) == "sep=[1.00 0.25]"
    line = format_record({"epoch": 1, "epochs": 1, "train_time_s": 1.0, "samples_per_s": 1.0, "test_acc": 0.5,
                          "exit_1": 0.4, "exit_2": 0.5, **out})
    assert line.endswith("exits=[0.4000 0.5000] sep=[1.00 0.25]")


def test_separability_is_the_class_points_through_g_and_back_through_h():
    _, al = _target_path(10, 16, 3)
    with torch.no_grad():
        t, targets = F.one_hot(class_points(10), 10).float(), []
        for block in al.blocks:
            t = block.encode_target(t)
            targets.append(t)
        logits = decode_to_logits(al.blocks, targets)
    expected = {}
    for k, (tk, z) in enumerate(zip(targets, logits), start=1):
        expected[f"sep_dist_{k}"] = float(torch.cdist(tk, tk).sum() / (10 * 9))
        expected[f"sep_acc_{k}"] = float((z.argmax(1) == torch.arange(10)).float().mean())
    assert al.target_separability() == pytest.approx(expected, rel=1e-6)


# -- warm-up ---------------------------------------------------------------------------------
def test_warmup_makes_every_depth_decodable_with_100_classes():
    """He-initialised, the 100 class targets at depths 2-4 nearly coincide and decode at chance;
    warm-up (seconds, no data) spreads them so that every depth decodes. The settings are those of
    configs/quick/cifar100_*_al.yaml (1000 steps at the default warm-up lr)."""
    steps = 1000
    _, cold = _target_path(100, 256, 4)
    before = cold.target_separability()
    cfg, al = _target_path(100, 256, 4, target_warmup_steps=steps, target_warmup_until="steps")
    al.warmup(warmup_chunks(cfg.model, 100, 50), lambda stats: None)
    al.end_warmup()
    after = al.target_separability()
    print("\n100 classes, d=256, 4 blocks: before", {k: round(v, 3) for k, v in before.items()},
          f"\n  after {steps} warm-up steps", {k: round(v, 3) for k, v in after.items()})
    assert before["sep_acc_4"] <= 0.05 and before["sep_dist_4"] < 0.1 * after["sep_dist_4"]
    for k in range(1, 5):
        assert after[f"sep_acc_{k}"] >= 0.9, f"depth {k}: {after[f'sep_acc_{k}']} (chance 0.01)"


def test_warmup_trains_only_the_target_path_and_drops_its_optimizer():
    cfg, al = _target_path(10, 16, 2, target_warmup_steps=20)
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in al.blocks]
    warm_up(al, cfg.model, 10, 8, lambda line: None)
    for b, old in zip(al.blocks, before):
        for name, value in b.state_dict().items():
            changed = not torch.equal(value, old[name])
            assert changed == (name.split(".")[0] in ("g", "h")), name
    assert all(t.opt_warmup is None and t.step_count == 0 for t in al.trainers)
    assert all(not t.opt_target.state for t in al.trainers)  # the data steps start from a fresh Adam


def test_warmup_steps_are_every_class_once_in_chunks():
    model = config_from_dict({"model": {"target_warmup_steps": 5}}).model
    chunks = list(warmup_chunks(model, 7, chunk_size=2))
    assert [c.shape for c in chunks] == [(2, 7), (2, 7), (1, 7)]
    assert torch.equal(torch.cat(chunks), torch.arange(7).repeat(5, 1))
    # no chunk straddles a separability check (every 4 steps here), whatever the chunk size
    model = config_from_dict({"model": {"target_warmup_steps": 10, "target_warmup_check_every": 4}}).model
    assert [len(c) for c in warmup_chunks(model, 7, chunk_size=3)] == [3, 1, 3, 1, 2]


def _warm(until, steps=400, every=10, chunk=4):
    cfg, al = _target_path(10, 32, 3, target_warmup_steps=steps, target_warmup_until=until,
                           target_warmup_check_every=every)
    lines = []
    return al, warm_up(al, cfg.model, 10, chunk, lines.append), lines


def test_warmup_stops_at_the_first_check_where_every_depth_is_separated():
    torch.set_num_threads(1)
    al, out, lines = _warm("separated")
    steps = out["warmup_steps"]
    assert 0 < steps < 400 and steps % 10 == 0 and out["warmup_steps_bound"] == 400, out
    assert all(out[f"sep_acc_{k}"] == 1.0 for k in (1, 2, 3))
    assert lines[0].startswith(f"target warm-up: stopped at {steps} of 400 steps (every depth separated) in ")
    assert all(t.opt_warmup is None for t in al.trainers)
    # one check earlier it was not separated yet, and the stop changed nothing: the state is that of
    # `until=steps` run for the same count (the checks only read it; one warm-up Adam spans the segments)
    _, shorter, _ = _warm("steps", steps=steps - 10)
    assert min(shorter[f"sep_acc_{k}"] for k in (1, 2, 3)) < 1.0
    same, full, full_lines = _warm("steps", steps=steps, chunk=7)
    assert full["warmup_steps"] == steps and full_lines[0].startswith(f"target warm-up: ran all {steps} steps in ")
    assert_states_equal(same.state_dicts(), al.state_dicts())


def test_warmup_until_steps_runs_them_all_and_an_unseparated_run_stops_at_the_bound():
    torch.set_num_threads(1)
    _, out, lines = _warm("steps", steps=300)
    assert out["warmup_steps"] == 300 and lines[0].startswith("target warm-up: ran all 300 steps in ")
    _, out, lines = _warm("separated", steps=25, every=10)  # checks at 10, 20, 25: too few steps to separate
    assert out["warmup_steps"] == 25 and lines[0].startswith("target warm-up: ran all 25 steps in ")


def test_bad_warmup_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="model.target_warmup_lr must be positive"):
        config_from_dict({"model": {"target_warmup_lr": 0}})
    with pytest.raises(ConfigError, match="model.target_warmup_steps must not be negative"):
        config_from_dict({"model": {"target_warmup_steps": -1}})
    with pytest.raises(ConfigError, match="^model.target_warmup_check_every must be positive, got 0$"):
        config_from_dict({"model": {"target_warmup_check_every": 0}})
    with pytest.raises(ConfigError, match="^model.target_warmup_until: 'never' is not one of separated, steps$"):
        config_from_dict({"model": {"target_warmup_until": "never"}})


# -- the paper's arithmetic, untouched with warm-up 0 ------------------------------------------
def _paper_steps_by_hand(blocks, chunks, lr, target_lr):
    """The paper's algorithm written out from the modules, no BlockTrainer and no warm-up code."""
    opts = [(torch.optim.Adam([*b.f.parameters(), *b.b.parameters()], lr=lr),
             torch.optim.Adam([*b.g.parameters(), *b.h.parameters()], lr=target_lr)) for b in blocks]
    for chunk in chunks:
        for x, y in zip(chunk.x, chunk.y):
            s, t = x, F.one_hot(y, blocks[0].num_classes).float()
            for b, (of, ot) in zip(blocks, opts):
                s_new = b.f(s.detach())
                t_new = torch.sigmoid(b.g(t.detach()))
                loss = F.mse_loss(b.b(s_new), t_new.detach()) + F.mse_loss(torch.sigmoid(b.h(t_new)), t.detach())
                of.zero_grad(set_to_none=True)
                ot.zero_grad(set_to_none=True)
                loss.backward()
                of.step()
                ot.step()
                s, t = s_new, t_new
    return opts


@pytest.mark.parametrize("paper", ["mnist_mlp_al", "cifar10_mlp_al"])
def test_paper_configs_with_warmup_0_are_the_paper_arithmetic_bitwise(tmp_path, paper):
    from ray_al.core.batches import epoch_chunks
    from ray_al.data.datasets import load_dataset
    from ray_al.models import build_al_blocks

    torch.set_num_threads(1)
    shape = [1, 28, 28] if paper.startswith("mnist") else [3, 32, 32]
    cfg = load_config(REPO / "configs" / "paper" / f"{paper}.yaml",
                      ["data.source=synthetic", f"data.synthetic_shape={shape}", "data.synthetic_size=96",
                       "model.d=64", "train.epochs=1", "train.trainer=al_local", "train.threads=1",
                       "train.chunk_size=2", "checkpoint.enabled=false", f"run_dir={tmp_path}",
                       "optim.schedule=constant"])
    assert cfg.model.target_warmup_steps == 0
    ours = train(cfg, keep_trainer=True, **QUIET)
    data = load_dataset(cfg.data)
    blocks = build_al_blocks(cfg.model, data.input_shape, data.num_classes, cfg.train.seed)
    chunks = epoch_chunks(data.train_x, data.train_y, 32, 2, epoch=0, seed=cfg.train.seed, aug=cfg.data.augment)
    opts = _paper_steps_by_hand(blocks, chunks, cfg.optim.lr, 2 * cfg.optim.lr)
    for i, (state, b, (of, ot)) in enumerate(zip(ours.trainer.state_dicts(), blocks, opts)):
        assert_states_equal(state["block"], b.state_dict(), f"block {i + 1}")
        assert_states_equal(state["opt_forward"], of.state_dict(), f"block {i + 1} Adam(f, b)")
        assert_states_equal(state["opt_target"], ot.state_dict(), f"block {i + 1} Adam(g, h)")


# -- checkpoints and resume ------------------------------------------------------------------
def _warm_cfg(tmp_path, **over):
    return tiny_config(tmp_path, train={"trainer": "al_local", "epochs": 2},
                       model={"target_warmup_steps": 40, **over}, name="run",
                       checkpoint={"enabled": True, "every_steps": 20, "keep": 50})


def test_step_0_checkpoint_is_after_warmup_and_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    lines = []
    full = train(_warm_cfg(tmp_path / "a"), keep_trainer=True, log=lines.append)
    assert any(line.startswith("target warm-up: ran all 40 steps in") for line in lines)
    assert full.warmup["warmup_steps"] == 40 and {"sep_acc_2", "sep_dist_2"} <= set(full.warmup)
    assert full.warmup["warmup_steps_bound"] == 40 and full.warmup["warmup_time_s"] > 0
    assert {"sep_acc_1", "sep_dist_2"} <= set(full.history[0])
    # the step-0 checkpoint holds the warmed-up target path
    step0 = ckpt.read_block(str(full.run_dir), ckpt.read_manifest(str(full.run_dir), 0), 0)
    fresh = ALLocal(_warm_cfg(tmp_path / "c"), (1, 8, 8), 10, total_steps=1)
    assert not torch.equal(step0["block"]["g.weight"], fresh.blocks[0].g.weight)
    # killed after warm-up, mid epoch 1: resumes from there with no second warm-up
    crashed = tmp_path / "b" / "run"
    shutil.copytree(full.run_dir, crashed)
    for step in ckpt.complete_checkpoints(str(crashed)):
        if step > 20:
            shutil.rmtree(crashed / "checkpoints" / f"step-{step:09d}")
    (crashed / "metrics.jsonl").unlink()
    lines = []
    resumed = train(run_config(crashed), resume_dir=crashed, keep_trainer=True, log=lines.append)
    assert "resumed from checkpoint step 20 (epoch 1, batch 20)" in lines
    assert not any(line.startswith("target warm-up") for line in lines)
    for a, b in zip(full.trainer.state_dicts(), resumed.trainer.state_dicts()):
        assert_states_equal(a, b)


def test_a_run_killed_during_warmup_resumes_from_step_0_exactly(tmp_path):
    torch.set_num_threads(1)
    full = train(_warm_cfg(tmp_path / "a"), keep_trainer=True, **QUIET)
    # killed during warm-up: the run folder has its identity and config and nothing else
    killed = tmp_path / "b" / "run"
    killed.mkdir(parents=True)
    for name in ("run.json", "config.yaml"):
        shutil.copy(full.run_dir / name, killed / name)
    lines = []
    resumed = train(run_config(killed), resume_dir=killed, keep_trainer=True, log=lines.append)
    assert "no checkpoint yet: starting this run from step 0" in lines
    for a, b in zip(full.trainer.state_dicts(), resumed.trainer.state_dicts()):
        assert_states_equal(a, b)
    assert resumed.history == [{**r, "train_time_s": n["train_time_s"], "samples_per_s": n["samples_per_s"]}
                               for r, n in zip(full.history, resumed.history)]
