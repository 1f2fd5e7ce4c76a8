"""Pure loss functions: next-token CE only at supervised positions, and the per-image cosine alignment loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eve_lightning.constants import IGNORE_INDEX
from eve_lightning.models.fused_ce import linear_cross_entropy_sum


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions whose next token is supervised.

    Args:
        labels: [B, L] with IGNORE_INDEX where not supervised.

    Returns:
        (rows, cols, targets): the hidden state at (rows, cols) predicts `targets`; each [K].
    """
    nxt = labels[:, 1:]  # [B, L-1]
    rows, cols = (nxt != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows, cols, nxt[rows, cols]


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: nn.Module,
    chunk_size: int = 4096,
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    impl: str = "torch",
    uniform_calls: bool = False,
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross entropy, computing logits only where a label is supervised.

    Args:
        hidden: [B, L, H] final (normed) hidden states.
        labels: [B, L] token labels aligned with `hidden` (shifted inside).
        lm_head: the output projection H -> V.
        chunk_size: supervised positions per logits chunk (bounds the [chunk, V] float32 buffer).
        positions: `supervised_positions(labels)` when already known (finding them reads a count back from the
            device, which is cheaper before the decoder is queued than after).
        impl: "torch" (logits per chunk, then ``F.cross_entropy``), "fused" or "liger" (the LM head and the loss
            in one pass that keeps no logits: ``models.fused_ce``); the same loss either way.
        uniform_calls: call ``lm_head`` the same number of times on every rank (the most chunks any rank needs,
            agreed by one all-reduce; at least once, on zero rows where a rank has fewer or no supervised tokens).
            DeepSpeed ZeRO-3 gathers the head's weight with a collective at every call, so a rank with fewer chunks
            would leave another waiting. The loss is unchanged.

    Returns:
        (loss, n_tokens). With no supervised token the loss is an exact 0 that still keeps the graph
        (never NaN).
    """
    rows, cols, targets = positions if positions is not None else supervised_positions(labels)
    n = int(targets.numel())
    calls = -(-n // chunk_size)  # chunks of supervised positions
    if uniform_calls and impl == "torch":
        calls = calls_on_every_rank(max(calls, 1), hidden.device)
    if calls == 0:
        return hidden.sum() * 0.0, 0
    h = hidden[rows, cols]  # [K, H]
    if impl != "torch":
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        return linear_cross_entropy_sum(h, weight, bias, targets, impl, chunk_size) / n, n
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(calls):  # past the last supervised position a chunk has zero rows (uniform_calls)
        chunk = slice(i * chunk_size, (i + 1) * chunk_size)
        logits = lm_head(h[chunk]).float()  # [k, V]
        total = total + F.cross_entropy(logits, targets[chunk], reduction="sum")
    if n == 0:  # zero rows only: an exact 0 that keeps the graph
        return total + hidden.sum() * 0.0, 0
    return total / n, n


def calls_on_every_rank(calls: int, device: torch.device) -> int:
    """The largest ``calls`` over the ranks of the default process group (``calls`` itself without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return calls
    most = torch.tensor([calls], device=device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    return int(most.item())


def cosine_alignment_loss(pred: torch.Tensor, target: torch.Tensor, image_index: torch.Tensor, n_images: int):
    """EVE's alignment loss: mean over images of (1 - mean cosine over the image's cells).

    Args:
        pred: [P, C] predicted teacher features (cells of all images, flat).
        target: [P, C] teacher features at the same cells.
        image_index: [P] image of each cell, in [0, n_images).
        n_images: number of images that contribute.

    Returns:
        Scalar loss (0 with the graph kept when there is no cell).
    """
    if pred.shape[0] == 0 or n_images == 0:
        return pred.sum() * 0.0
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # [P]
    sums = cos.new_zeros(n_images).index_add(0, image_index, cos)
    counts = cos.new_zeros(n_images).index_add(0, image_index, torch.ones_like(cos))
    per_image = 1.0 - sums / counts.clamp(min=1)  # [n_images]
    return per_image.mean()
