"""The packed-row FlexAttention block mask built from sample ids equals create_block_mask of the same rule."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from eve_lightning.models.block_mask import packed_block_mask, same_sample_causal_mod
from tests.helpers.packed_rows import packed_rows


def block_lists(num: torch.Tensor, idx: torch.Tensor) -> list[list[int]]:
    return [sorted(idx[b, 0, q, : num[b, 0, q]].tolist()) for b in range(num.shape[0]) for q in range(num.shape[2])]


@pytest.mark.parametrize(
    ("rows", "length"),
    [
        ([[300, 200, 129, 5], [1000]], 1000),  # length not a multiple of the block, a row with one sample
        ([[128, 128, 256, 100], [700, 300]], 1024),  # samples on block boundaries, padding at the end
        ([[40] * 20, [3, 1, 900]], 1024),  # many short samples, one-token samples
        ([[], [500, 12]], 640),  # a row of padding only
    ],
)
def test_partial_and_full_blocks_equal_create_block_mask(rows, length):
    seq = packed_rows(rows, length)
    ref = create_block_mask(same_sample_causal_mod(seq), seq.shape[0], None, length, length, device="cpu")
    ours = packed_block_mask(seq)
    assert block_lists(ours.kv_num_blocks, ours.kv_indices) == block_lists(ref.kv_num_blocks, ref.kv_indices)
    assert block_lists(ours.full_kv_num_blocks, ours.full_kv_indices) == block_lists(
        ref.full_kv_num_blocks, ref.full_kv_indices
    )
    assert ours.seq_lengths == (length, length)


def test_sample_ids_in_any_order_and_padding_inside_a_row():
    seq = packed_rows([[200, 300, 150]], 700)
    seq[0, :200] = 2  # the first sample numbered last
    seq[0, 500:520] = -1  # padding between samples
    ref = create_block_mask(same_sample_causal_mod(seq), 1, None, 700, 700, device="cpu")
    ours = packed_block_mask(seq)
    assert block_lists(ours.kv_num_blocks, ours.kv_indices) == block_lists(ref.kv_num_blocks, ref.kv_indices)
    assert block_lists(ours.full_kv_num_blocks, ours.full_kv_indices) == block_lists(
        ref.full_kv_num_blocks, ref.full_kv_indices
    )


def test_flex_attention_with_the_block_mask_keeps_samples_apart():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    seq = packed_rows([[100, 60, 90]], 256)
    q, k, v = (torch.randn(1, 2, 256, 16) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=packed_block_mask(seq))
    # the second sample alone, attended with plain causal attention, gives the same outputs
    sl = slice(100, 160)
    alone = torch.nn.functional.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True)
    torch.testing.assert_close(out[:, :, sl], alone, rtol=1e-5, atol=1e-5)
