"""FlexAttention block mask of packed rows, built at block granularity from the sample ids.

``create_block_mask`` evaluates the mask function on every (query, key) pair of a row unless it is compiled: for
rows of 8192 tokens that is 67M evaluations per row and step. The rule of packed rows (a token attends to earlier
tokens of its own sample; padding attends to itself) is known per block from which samples a block holds, so the
block structure is computed here from a [B, n_blocks, n_samples] presence table instead, and the token-level rule
is left to the kernel's ``mask_mod`` inside the partial blocks only. The result has the same partial and full
blocks as ``create_block_mask`` of the same rule (checked in tests/models).
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK = 128  # FlexAttention's default block size


def same_sample_causal_mod(seq: torch.Tensor) -> Any:
    """The token rule as a FlexAttention ``mask_mod`` over ``seq`` [B, L] sample ids (-1 on padding)."""

    def mask_mod(b, h, q, kv):
        return ((seq[b, q] == seq[b, kv]) & (q >= kv) & (seq[b, kv] >= 0)) | (q == kv)

    return mask_mod


def _kv_lists(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, nq, nk] bool -> (counts [B, 1, nq] int32, indices [B, 1, nq, nk] int32, the listed blocks first)."""
    counts = blocks.sum(-1, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[:, None], order[:, None]


def packed_block_mask(seq: torch.Tensor, block: int = BLOCK) -> Any:
    """BlockMask of packed rows: causal attention inside each sample, padding to itself.

    Args:
        seq: [B, L] int sample id of every token, -1 on padding.
        block: query and key block size.
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, length = seq.shape
    nb = -(-length // block)
    padded = torch.full((b, nb * block), -1, dtype=seq.dtype, device=seq.device)
    padded[:, :length] = seq
    ids = padded.view(b, nb, block)  # [B, nb, block]
    # presence[b, i, s]: block i of row b holds a token of sample s; a row holds at most `length` samples, which
    # bounds s without reading the ids back to the host (no sync on the training path)
    presence = torch.zeros(b, nb, max(length, 1), dtype=torch.float32, device=seq.device)
    valid = ids >= 0
    presence.scatter_add_(2, ids.clamp(min=0), valid.to(torch.float32))  # [B, nb, S] token counts
    shared = torch.bmm(presence, presence.transpose(1, 2)) > 0  # [B, nq, nk] a sample in both blocks
    qi = torch.arange(nb, device=seq.device)
    below = qi[None, :, None] > qi[None, None, :]  # [1, nq, nk] key block strictly before the query block
    diag = (qi[:, None] == qi[None, :])[None]  # [1, nq, nk]
    pure = valid.all(-1) & (ids == ids[:, :, :1]).all(-1)  # [B, nb] one sample, no padding, in range
    first = ids[:, :, 0]  # [B, nb]
    full = below & pure[:, :, None] & pure[:, None, :] & (first[:, :, None] == first[:, None, :])
    partial = ((below & shared) | diag) & ~full
    kv_num, kv_idx = _kv_lists(partial)
    full_num, full_idx = _kv_lists(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=same_sample_causal_mod(seq),
        seq_lengths=(length, length),
    )  # fmt: skip
