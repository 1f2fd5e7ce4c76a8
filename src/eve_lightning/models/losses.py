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


CE_CHUNK = 4096  # supervised positions per LM-head call (bounds the [chunk, V] float32 logits)


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: nn.Module,
    chunk_size: int = CE_CHUNK,
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    impl: str = "torch",
    calls: int | None = None,
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
        calls: how many times to call ``lm_head`` (``lm_head_calls``; None: once per chunk of supervised positions).
            More calls than chunks run on zero rows; the loss is unchanged.

    Returns:
        (loss, n_tokens). With no supervised token the loss is an exact 0 that still keeps the graph
        (never NaN).
    """
    rows, cols, targets = positions if positions is not None else supervised_positions(labels)
    n = int(targets.numel())
    if impl != "torch":  # the head's weight is read directly (refused under ZeRO-3): ``calls`` does not apply
        if n == 0:
            return hidden.sum() * 0.0, 0
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        return linear_cross_entropy_sum(hidden[rows, cols], weight, bias, targets, impl, chunk_size) / n, n
    calls = -(-n // chunk_size) if calls is None else calls  # chunks of supervised positions
    if calls == 0:
        return hidden.sum() * 0.0, 0
    h = hidden[rows, cols]  # [K, H]
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(calls):  # past the last supervised position a chunk has zero rows (lm_head_calls)
        chunk = slice(i * chunk_size, (i + 1) * chunk_size)
        logits = lm_head(h[chunk]).float()  # [k, V]
        total = total + F.cross_entropy(logits, targets[chunk], reduction="sum")
    if n == 0:  # zero rows only: an exact 0 that keeps the graph
        return total + hidden.sum() * 0.0, 0
    return total / n, n


def lm_head_calls(n_positions: int, device: torch.device, chunk_size: int = CE_CHUNK) -> int:
    """How many times every rank calls the LM head in ``causal_lm_loss``: the most chunks any rank needs, at least 1.

    DeepSpeed ZeRO-3 gathers the head's weight with a collective at every call, so a rank with fewer chunks (or no
    supervised token) would leave another waiting. One all-reduce of the default process group (``n_positions``'s
    own chunk count without one); it reads the result back, so models call it before queueing the decoder.
    """
    calls = max(-(-n_positions // chunk_size), 1)
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
