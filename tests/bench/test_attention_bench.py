"""bench.attention's padded layout computes per-sample causal attention (checked on the CPU's math backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from eve_lightning.bench import attention as bench


def test_padded_sdpa_equals_each_sample_on_its_own():
    lengths = bench.sample_lengths("pretrain", 3)
    assert len(lengths) == 3 and all(300 < n < 900 for n in lengths)  # an image's tokens and a caption
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q = torch.randn(total, 4, 8, generator=gen)
    k, v = (torch.randn(total, 2, 8, generator=gen) for _ in range(2))  # two query heads per key/value head
    out = bench.padded_fn(SDPBackend.MATH, lengths, gqa=False, device=torch.device("cpu"))(q, k, v)  # [T, H, D]
    start, want = 0, []
    for n in lengths:
        qs, ks, vs = (x[start : start + n].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(2, 0), vs.repeat_interleave(2, 0)
        want.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
        start += n
    torch.testing.assert_close(out, torch.cat(want))
    flat, valid, length = bench.padded_index(lengths, torch.device("cpu"))
    assert length % bench.PAD_TO == 0 and length >= max(lengths) and flat.numel() == total == int(valid.sum())
