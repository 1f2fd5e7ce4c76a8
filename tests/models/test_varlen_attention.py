"""``torch_varlen`` attention: segment offsets of packed rows, the same numbers as the dense block-diagonal mask,
and the flash kernel against that rule on a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eve_lightning.models import varlen_attention as va
from tests.helpers.packed_rows import packed_rows


def dense_attention(q, k, v, seq):
    """The decoder's dense packed-row rule: causal inside each sample, padding to itself. [B, H, L, D] inputs."""
    length = seq.shape[1]
    idx = torch.arange(length, device=seq.device)
    same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, None, :] >= 0)
    eye = torch.eye(length, dtype=torch.bool, device=seq.device)
    mask = ((same & (idx[None, :] <= idx[:, None])) | eye)[:, None]
    k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # [B, L, H, D]


def test_segment_offsets_cut_at_every_sample_and_row():
    seq = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 1, 1], [0, 1, 2, -1, -1, -1]])
    assert va.segment_offsets(seq).tolist() == [0, 2, 5, 6, 10, 12, 13, 14, 15, 18]
    same_id_across_rows = torch.tensor([[0, 0, 0], [0, 0, 0]])  # row 2 is a new segment though its id is equal
    assert va.segment_offsets(same_id_across_rows).tolist() == [0, 3, 6]
    kw = va.decoder_kwargs(seq)
    assert kw["cu_seq_lens_q"] is kw["cu_seq_lens_k"] and kw["max_length_q"] == kw["max_length_k"] == 6  # the row


def test_padding_is_cut_short_so_the_kernel_bound_is_the_longest_sample_not_the_row():
    seq = packed_rows([[300, 100], [50]], 1024)  # 624 and 974 padding tokens
    offsets = va.segment_offsets(seq)
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    assert offsets[-1] == 2048 and lengths[:2] == [300, 100] and lengths[lengths.index(50, 2)] == 50
    assert max(lengths[2:]) <= va.PAD_SEGMENT  # every padding piece
    starts = set(offsets.tolist())
    assert {0, 300, 400, 1024, 1074} <= starts  # samples and rows still start segments
    kw = va.decoder_kwargs(seq)
    assert kw["max_length_q"] == kw["max_length_k"] == 384  # 300, rounded up to whole 128-token blocks


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2)])
def test_matches_the_dense_packed_mask_on_every_real_token(heads, kv_heads):
    torch.manual_seed(0)
    seq = packed_rows([[5, 9, 3], [17], [1, 6, 4, 2]], 17)
    b, length, d = seq.shape[0], seq.shape[1], 8
    q = torch.randn(b, heads, length, d)
    k, v = torch.randn(2, b, kv_heads, length, d)
    out, weights = va.varlen_attention_forward(None, q, k, v, None, **va.decoder_kwargs(seq))
    assert weights is None and out.shape == (b, length, heads, d)
    real = seq >= 0  # padding outputs are never read
    torch.testing.assert_close(out[real], dense_attention(q, k, v, seq)[real])


def test_needs_the_offsets_and_refuses_dropout():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="needs the segment offsets"):
        va.varlen_attention_forward(None, q, q, q, None)
    with pytest.raises(ValueError, match="no attention dropout"):
        va.varlen_attention_forward(None, q, q, q, None, dropout=0.1, **va.decoder_kwargs(torch.zeros(1, 4)))


def test_float32_inputs_under_autocast_run_the_kernel_in_the_autocast_dtype():
    # the rotary embedding turns autocast's bf16 query and key back into float32: they must still reach the kernel
    assert va.kernel_dtype(torch.bfloat16, "cpu") is torch.bfloat16
    assert va.kernel_dtype(torch.float32, "cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert va.kernel_dtype(torch.float32, "cpu") is torch.bfloat16


@pytest.mark.gpu
def test_the_model_under_autocast_calls_the_kernel_in_every_layer(monkeypatch):
    if not torch.cuda.is_available() or not va.kernel_available():
        pytest.skip("needs CUDA and torch.nn.attention.varlen")
    from tests.helpers.tiny_llm import tiny_llm

    calls = []
    kernel = va._VARLEN_ATTN
    monkeypatch.setattr(va, "_VARLEN_ATTN", lambda *a, **k: calls.append(a[0].dtype) or kernel(*a, **k))
    llm = tiny_llm(va.NAME).cuda()  # float32 weights, as trained under autocast
    seq = packed_rows([[20, 12], [30]], 32).cuda()
    ids = torch.randint(0, 128, seq.shape, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        llm.model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False, **va.decoder_kwargs(seq))
    assert calls == [torch.bfloat16] * llm.config.num_hidden_layers


@pytest.mark.gpu
def test_flash_kernel_matches_the_rule_in_bf16():
    if not torch.cuda.is_available() or not va.kernel_available():
        pytest.skip("needs CUDA and torch.nn.attention.varlen")
    torch.manual_seed(0)
    seq = packed_rows([[700, 600, 300], [1500, 90], [8]], 1600).cuda()
    b, length, heads, kv_heads, d = 3, 1600, 8, 2, 64
    q = torch.randn(b, heads, length, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(b, kv_heads, length, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "kv")
    out, _ = va.varlen_attention_forward(None, q, k, v, None, **va.decoder_kwargs(seq))
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = dense_attention(*leaves, seq)
    real = seq >= 0
    torch.testing.assert_close(out[real].float(), ref[real], rtol=2e-2, atol=2e-2)
    weights = torch.randn_like(ref[real])
    (out[real].float() * weights).sum().backward()
    (ref[real] * weights).sum().backward()
    for got, want in zip((q, k, v), leaves):  # the 2 key/value heads' gradients sum over their 4 query heads each
        want = want.grad
        torch.testing.assert_close(got.grad.float(), want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))


@pytest.mark.gpu
def test_compiled_blocks_take_a_new_kernel_bound_every_step_without_recompiling_each_time():
    if not torch.cuda.is_available() or not va.kernel_available():
        pytest.skip("needs CUDA and torch.nn.attention.varlen")
    from eve_lightning.models.compile import compile_decoder_layers
    from tests.helpers.tiny_llm import tiny_llm

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    llm = tiny_llm(va.NAME).cuda()
    compile_decoder_layers(llm, backend="aot_eager")
    frames, bounds = [], []
    for length, longest in ((160, 100), (200, 150), (300, 260), (400, 140), (520, 390)):
        seq = packed_rows([[longest, 40], [30]], length).cuda()
        kw = va.decoder_kwargs(seq)
        ids = torch.randint(0, 128, seq.shape, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = llm(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False, **kw)
        out.logits.float().sum().backward()
        frames.append(torch._dynamo.utils.counters["frames"]["ok"])
        bounds.append(kw["max_length_q"])
    assert bounds == [128, 200, 300, 256, 512]
    assert frames[-1] <= 2  # the first bound statically, then one graph with the bound as a symbol
