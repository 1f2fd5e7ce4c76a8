"""Global loss normalization: on several ranks a step's gradient is that of the token (and image) means over all
ranks, as when the same samples are trained on one GPU."""

from __future__ import annotations

import torch

from eve_lightning.lit.loss_reduction import global_mean_terms, undo_deepspeed_gas_scaling


def test_the_rank_average_of_the_gradients_is_the_global_mean_gradient():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    # two ranks with very different numbers of supervised tokens and aligned images
    tokens = [torch.randn(5, 3), torch.randn(40, 3)]
    images = [torch.randn(1, 3), torch.randn(3, 3)]
    ce = [(t @ w).square().mean() for t in tokens]  # per-rank means, as the model returns them
    al = [0.5 * (i @ w).abs().mean() for i in images]
    totals = torch.stack(
        [torch.tensor([float(len(t)), float(len(i)), float(c) * len(t), float(a) * len(i)])
         for t, i, c, a in zip(tokens, images, ce, al)]
    ).sum(0)  # fmt: skip
    outs = [
        global_mean_terms(c, a, len(t), len(i), world_size=2, all_reduce_sum=lambda x: totals.clone())
        for c, a, t, i in zip(ce, al, tokens, images)
    ]
    averaged = torch.autograd.grad(sum(o.loss for o in outs) / 2, w, retain_graph=True)[0]  # DDP averages ranks
    ce_all = (torch.cat(tokens) @ w).square().mean()
    al_all = 0.5 * (torch.cat(images) @ w).abs().mean()
    torch.testing.assert_close(averaged, torch.autograd.grad(ce_all + al_all, w)[0])
    per_rank = torch.autograd.grad(sum(c + a for c, a in zip(ce, al)) / 2, w)[0]
    assert not torch.allclose(per_rank, averaged, rtol=1e-2)  # per-rank means weigh the 5-token rank 8x too much
    torch.testing.assert_close(outs[0].loss_ce, ce_all.detach())
    torch.testing.assert_close(outs[1].loss_align, al_all.detach())


def test_a_step_without_images_keeps_the_alignment_graph_at_zero_weight():
    w = torch.ones(2, requires_grad=True)
    ce, al = (w * 2).sum(), (w * 0).sum()  # the alignment term is the zero that keeps every parameter in the graph
    totals = torch.tensor([4.0, 0.0, float(ce) * 4, 0.0])
    out = global_mean_terms(ce, al, 4, 0, world_size=2, all_reduce_sum=lambda x: totals)
    assert torch.isfinite(out.loss) and float(out.loss_align) == 0.0
    out.loss.backward()
    assert torch.equal(w.grad, torch.full((2,), 4.0))  # 2 x (4 tokens x 2 ranks / 4 tokens)


def test_deepspeed_gets_the_loss_times_the_accumulation_because_its_engine_divides_again():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    loss = torch.tensor(2.0)
    assert float(undo_deepspeed_gas_scaling(loss, DeepSpeedStrategy(stage=3), 4)) == 8.0  # / 4 twice -> / 4 once
    assert float(undo_deepspeed_gas_scaling(loss, DeepSpeedStrategy(stage=3), 1)) == 2.0
    assert float(undo_deepspeed_gas_scaling(loss, DDPStrategy(), 4)) == 2.0  # DDP and FSDP divide only once
