"""Losses normalised over all ranks: every supervised token (and aligned image) of an optimizer step weighs the same.

With per-rank means, a step on N ranks averages N micro-batch means (what DDP's gradient averaging makes of them):
a rank with few supervised tokens weighs as much as one with many, and the step differs from the same samples
trained on one GPU. ``global_mean_terms`` rescales each rank's terms by its share of the step's tokens and images,
so that the gradient DDP, ZeRO and FSDP average over ranks is the gradient of the global means. One all-reduce of
four numbers per micro-batch; a single rank is left untouched. With gradient accumulation the means are taken per
round of micro-batches (one per rank), and the rounds are averaged: a run on 1 GPU and one on N GPUs then match
when both accumulate the same number of rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GlobalLoss:
    """The loss to backpropagate on this rank, and the step's global means (for logging; detached)."""

    loss: torch.Tensor
    loss_ce: torch.Tensor
    loss_align: torch.Tensor


def global_mean_terms(
    ce: torch.Tensor,
    align: torch.Tensor,
    n_tokens: int,
    n_images: int,
    *,
    world_size: int,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
) -> GlobalLoss:
    """Rescale this rank's loss terms so that the average over ranks is the global token and image mean.

    Args:
        ce: this rank's mean cross entropy over its ``n_tokens`` supervised tokens (with graph).
        align: this rank's weighted alignment term, a mean over its ``n_images`` aligned images (with graph).
        n_tokens: supervised tokens of this rank's micro-batch.
        n_images: aligned images of this rank's micro-batch.
        world_size: ranks whose gradients are averaged.
        all_reduce_sum: sums a float tensor over the ranks (every rank calls it, in the same order).

    Returns:
        ``loss`` = ce x n x W / N + align x m x W / M (N, M: the step's tokens and images over all ranks), whose
        average over ranks has the gradient of the global means; ``loss_ce`` and ``loss_align``: those means.
    """
    counts = ce.new_tensor([n_tokens, n_images], dtype=torch.float32)  # [N, M] of this rank
    local = torch.cat([counts, torch.stack([ce.detach().float(), align.detach().float()]) * counts])
    total = all_reduce_sum(local)  # [N, M, CE sum, alignment sum] over ranks
    tokens, images = total[0].clamp(min=1), total[1].clamp(min=1)
    loss = ce * (n_tokens * world_size / tokens) + align * (n_images * world_size / images)
    return GlobalLoss(loss, total[2] / tokens, total[3] / images)


def undo_deepspeed_gas_scaling(loss: torch.Tensor, strategy: object, accumulate: int) -> torch.Tensor:
    """Compensate DeepSpeed dividing the loss by the accumulation steps a second time.

    Lightning divides each micro-batch's loss by ``accumulate_grad_batches``; DeepSpeed's ``engine.backward`` divides
    it again by the same number (its ``gradient_accumulation_steps``, which Lightning sets). Without this the
    gradients would be ``1 / accumulate`` too small: the gradient norm, its clipping and Adam's epsilon would see
    another step than under DDP or FSDP.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if accumulate > 1 and isinstance(strategy, DeepSpeedStrategy):
        return loss * accumulate
    return loss
