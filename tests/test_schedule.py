"""The paper's lr schedule (ray_al/core/schedule.py): x0.1 after 40%, 60% and 80% of the steps, then x0.5 after
90%, for f and b at lr and for g and h at 2 x lr; in process, in the BP twin, and through the Ray actors."""
import pytest
import torch
import torch.nn.functional as F

from ray_al.config import ModelConfig, OptimConfig
from ray_al.core.batches import batches_per_epoch, epoch_chunks
from ray_al.core.block_trainer import BlockTrainer
from ray_al.core.schedule import lr_multiplier
from ray_al.data.datasets import load_dataset
from ray_al.models import build_al_block, build_al_blocks
from ray_al.run.loop import train
from ray_al.trainers.bp import BPTrainer
from tests.helpers import assert_states_equal, tiny_config

# written out, not computed by the code under test: the multiplier of each step of a 20-step run
PAPER_20 = [1.0] * 8 + [0.1] * 4 + [0.01] * 4 + [0.001] * 2 + [0.0005] * 2


def _paper(step: int, total: int) -> float:
    """The same schedule by cases, for runs of other lengths: which milestones lie at or before `step`."""
    frac = step / total
    return 0.0005 if frac >= 0.9 else 0.001 if frac >= 0.8 else 0.01 if frac >= 0.6 else 0.1 if frac >= 0.4 else 1.0


def test_multipliers_at_the_milestones():
    assert [lr_multiplier("paper", s, 20) for s in range(20)] == pytest.approx(PAPER_20, rel=1e-12)
    # 45 steps: 40% is step 18, 60% step 27, 80% step 36, 90% step 40.5 (so from 41 on)
    got = {s: lr_multiplier("paper", s, 45) for s in (17, 18, 26, 27, 35, 36, 40, 41)}
    assert got == pytest.approx({17: 1, 18: 0.1, 26: 0.1, 27: 0.01, 35: 0.01, 36: 1e-3, 40: 1e-3, 41: 5e-4})
    assert all(lr_multiplier("constant", s, 20) == 1.0 for s in range(20))
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        lr_multiplier("cosine", 0, 20)


def test_block_trainer_steps_f_at_lr_and_g_h_at_twice_lr():
    torch.manual_seed(0)
    block = build_al_block(ModelConfig(name="mlp", d=8), (1, 4, 4), 10, 0, seed=0)
    trainer = BlockTrainer(block, OptimConfig(lr=1e-3, schedule="paper"), total_steps=20, index=0)
    seen = []
    for _ in range(20):
        trainer.step(torch.randn(4, 1, 4, 4), torch.randint(0, 10, (4,)))
        seen.append(([g["lr"] for g in trainer.opt_forward.param_groups],
                     [g["lr"] for g in trainer.opt_target.param_groups]))
    assert seen == [([pytest.approx(1e-3 * m)], [pytest.approx(2e-3 * m)]) for m in PAPER_20]


def test_bp_twin_follows_the_schedule(tmp_path):
    cfg = tiny_config(tmp_path, train={"trainer": "bp"}, optim={"lr": 1e-3, "schedule": "paper"})
    trainer = BPTrainer(cfg, (1, 8, 8), 10, 20)
    lrs = []
    step = trainer.opt.step

    def record(*args, **kwargs):
        lrs.append(trainer.opt.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.opt.step = record
    data = load_dataset(cfg.data)
    for chunk in epoch_chunks(data.train_x, data.train_y, 32, 4, epoch=0, seed=0):
        trainer._train_chunk(chunk)
        if len(lrs) >= 20:
            break
    assert lrs[:20] == pytest.approx([1e-3 * m for m in PAPER_20])


def _by_hand(blocks, chunks, lr, total, schedule):
    """The AL steps written out from the modules (no BlockTrainer), the lr of every step set from
    `schedule(step, total)`: f and b at lr x m, g and h at 2 lr x m."""
    opts = [(torch.optim.Adam([*b.f.parameters(), *b.b.parameters()], lr=lr),
             torch.optim.Adam([*b.g.parameters(), *b.h.parameters()], lr=2 * lr)) for b in blocks]
    step = 0
    for chunk in chunks:
        for x, y in zip(chunk.x, chunk.y):
            m = schedule(step, total)
            s, t = x, F.one_hot(y, blocks[0].num_classes).float()
            for b, (of, ot) in zip(blocks, opts):
                for opt, base in ((of, lr), (ot, 2 * lr)):
                    for group in opt.param_groups:
                        group["lr"] = base * m
                s_new, t_new = b.f(s.detach()), torch.sigmoid(b.g(t.detach()))
                loss = F.mse_loss(b.b(s_new), t_new.detach()) + F.mse_loss(torch.sigmoid(b.h(t_new)), t.detach())
                of.zero_grad(set_to_none=True)
                ot.zero_grad(set_to_none=True)
                loss.backward()
                of.step()
                ot.step()
                s, t = s_new, t_new
            step += 1
    return opts


def test_actors_follow_the_schedule_bitwise(ray_cluster, tmp_path):
    """Two epochs of digits (88 steps) through the Ray block actors end exactly where the written-out
    schedule ends, and not where the constant lr ends."""
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, train={"trainer": "al", "epochs": 2, "chunk_size": 4},
                      optim={"lr": 1e-3, "schedule": "paper"})
    result = train(cfg, log=lambda line: None, keep_trainer=True)
    try:
        states = result.trainer.state_dicts()
    finally:
        result.trainer.close()
    data = load_dataset(cfg.data)
    total = 2 * batches_per_epoch(len(data.train_x), 32)
    assert all(state["step_count"] == total == 88 for state in states)
    for state in states:  # the last step ran after 90%: x0.5 x 0.1^3
        assert state["opt_forward"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 5e-4)
        assert state["opt_target"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 5e-4)

    def reference(schedule):
        blocks = build_al_blocks(cfg.model, data.input_shape, data.num_classes, cfg.train.seed)
        chunks = [c for e in range(2) for c in epoch_chunks(data.train_x, data.train_y, 32, 4, epoch=e, seed=0)]
        _by_hand(blocks, chunks, 1e-3, total, schedule)
        return blocks

    for i, (state, block) in enumerate(zip(states, reference(_paper))):
        assert_states_equal(state["block"], block.state_dict(), f"block {i + 1}")
    constant = reference(lambda step, total: 1.0)
    assert not all(torch.equal(a, b) for a, b in zip(states[-1]["block"].values(), constant[-1].state_dict().values()))
