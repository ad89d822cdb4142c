"""One AL block's maps and losses, without Ray."""
import torch
import torch.nn as nn

from ray_al.config import ModelConfig
from ray_al.core.blocks import ALBlock, BlockOptions, bridge_contrastive_loss, class_targets, predict_all_exits
from ray_al.models import build_al_blocks


def _chain(options=BlockOptions()):
    torch.manual_seed(0)
    return [ALBlock(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ELU()), nn.Linear(3, 4), nn.Linear(4, 3),
                    nn.Sequential(nn.Linear(6, 4), nn.Sigmoid()), num_classes=3, is_first=True, options=options),
            ALBlock(nn.Sequential(nn.Linear(6, 5), nn.ELU()), nn.Linear(4, 4), nn.Linear(4, 4),
                    nn.Sequential(nn.Linear(5, 4), nn.Sigmoid()), num_classes=3, is_first=False, options=options)]


def test_losses_train_only_their_own_networks():
    b1, _ = _chain()
    x, y = torch.randn(5, 1, 3, 4), torch.tensor([0, 1, 2, 1, 0])
    s, t, bridge, ae = b1.local_losses(x, y)
    assert s.shape == (5, 6) and t.shape == (5, 4)
    bridge.backward(retain_graph=True)
    assert all(p.grad is not None for p in b1.forward_params())
    assert all(p.grad is None for p in b1.target_params())  # stopgrad on t_i
    b1.zero_grad(set_to_none=True)
    ae.backward()
    assert all(p.grad is not None for p in b1.target_params())
    assert all(p.grad is None for p in b1.forward_params())


def test_bridge_grad_option_reaches_g():
    b1, _ = _chain(BlockOptions(bridge_grad_to_g=True))
    _, _, bridge, _ = b1.local_losses(torch.randn(5, 1, 3, 4), torch.tensor([0, 1, 2, 1, 0]))
    bridge.backward()
    assert b1.g.weight.grad is not None and b1.h.weight.grad is None


def test_first_decoder_cross_entropy_option():
    b1, _ = _chain(BlockOptions(first_decoder_ce=True))
    y = torch.tensor([0, 1, 2, 1, 0])
    _, t, _, ae = b1.local_losses(torch.randn(5, 1, 3, 4), y)
    assert torch.allclose(ae, nn.functional.cross_entropy(b1.h(t), y))


def test_contrastive_bridge_loss_is_cross_entropy_over_the_classes_in_the_batch():
    b1, b2 = _chain(BlockOptions(bridge_loss="contrastive", bridge_temperature=0.1))
    x, y = torch.randn(5, 1, 3, 4), torch.tensor([2, 0, 2, 1, 0])
    s, t, bridge, _ = b1.local_losses(x, y)
    # by hand: the batch holds classes 2, 0, 1 (first seen in that order), one logit each
    classes = t[[0, 1, 3]].detach()
    logits = -(b1.b(s).unsqueeze(1) - classes.unsqueeze(0)).square().mean(-1) / 0.1
    assert torch.allclose(bridge, nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 2, 1])))
    bridge.backward()
    assert all(p.grad is not None for p in b1.forward_params())
    assert all(p.grad is None for p in b1.target_params())  # stopgrad on t_i, as with MSE
    # later blocks see no labels: rows of one class share t_{i-1}, hence t_i
    _, t2, bridge2, _ = b2.local_losses(s.detach(), t.detach())
    assert torch.equal(t2[0], t2[2]) and bridge2.item() > 0
    # a bridge answering its own class's target, far from the others, costs almost nothing
    far = torch.eye(3)[y]
    assert bridge_contrastive_loss(far, far, 0.01) < 1e-6 < bridge_contrastive_loss(far.roll(1, 0), far, 0.01)


def test_the_autoencoder_of_block_one_reconstructs_the_one_hot_label():
    b1, _ = _chain()
    y = torch.tensor([2, 0])
    _, t, _, ae = b1.local_losses(torch.randn(2, 1, 3, 4), y)
    expected = nn.functional.mse_loss(torch.sigmoid(b1.h(t)), nn.functional.one_hot(y, 3).float())
    assert torch.allclose(ae, expected)


def test_prediction_is_the_papers_composition_and_exits_agree():
    blocks = _chain()
    x = torch.randn(7, 1, 3, 4)
    b1, b2 = blocks
    by_hand = b1.h(torch.sigmoid(b2.h(b2.b(b2.f(b1.f(x))))))
    exits = predict_all_exits(blocks, x)
    assert torch.allclose(exits[1], by_hand)
    assert torch.allclose(exits[0], b1.h(b1.b(b1.f(x))))


def test_target_readout_recovers_the_class_weights_of_a_blend_of_targets():
    blocks = _chain(BlockOptions(exit_readout="targets"))
    x = torch.randn(7, 1, 3, 4)
    exits = predict_all_exits(blocks, x)  # sets the read-outs from the class targets t_1, t_2 [3, 4]
    b1, b2 = blocks
    assert torch.allclose(exits[1], b2.b(b2.f(b1.f(x))) @ torch.linalg.pinv(class_targets(blocks)[1]), atol=1e-5)
    # the bridge's MSE optimum under uncertainty is a blend sum_c p_c t_c; the read-out gives p back
    p = torch.softmax(torch.randn(5, 3), dim=1)
    for block, targets in zip(blocks, class_targets(blocks)):
        assert torch.allclose(block.read_out(p @ targets), p, atol=1e-3)  # float32, untrained: close targets
    decoders = predict_all_exits(_chain(), x)  # the same weights, the paper's decoders: other scores
    assert not torch.allclose(decoders[1], exits[1])


def test_blocks_are_built_alone_with_the_same_weights():
    cfg = ModelConfig(name="mlp", d=16)
    a = build_al_blocks(cfg, (1, 8, 8), 10, seed=3)
    b = build_al_blocks(cfg, (1, 8, 8), 10, seed=3)
    c = build_al_blocks(cfg, (1, 8, 8), 10, seed=4)
    assert all(torch.equal(p, q) for x, y in zip(a, b) for p, q in zip(x.parameters(), y.parameters()))
    assert not torch.equal(a[0].f[1].weight, c[0].f[1].weight)
