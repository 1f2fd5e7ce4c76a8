"""The attention module: backend names, what the decoder gets for padded and packed rows under every backend, and
the generation backend."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface

from eve_lightning.models import attention
from eve_lightning.models import varlen_attention as va
from eve_lightning.models.llm import build_llm
from tests.helpers.packed_rows import packed_rows
from tests.helpers.tiny_llm import tiny_llm

# two rows: samples of 3, 4 and 2 tokens then 3 padding; samples of 5 and 4, then 3 padding
SEQ = packed_rows([[3, 4, 2], [5, 4]], 12)


def positions(seq: torch.Tensor) -> torch.Tensor:
    """[B, L] positions restarting at every sample (0 on padding), as the packed collator gives them."""
    pos = torch.zeros_like(seq)
    for r in range(seq.shape[0]):
        for s in seq[r].unique().tolist():
            if s >= 0:
                at = seq[r] == s
                pos[r, at] = torch.arange(int(at.sum()))
    return pos


def old_dense_rule(seq: torch.Tensor) -> torch.Tensor:
    """The dense packed mask, element by element: earlier tokens of the same sample, and every token itself."""
    b, length = seq.shape
    mask = torch.zeros(b, 1, length, length, dtype=torch.bool)
    for r in range(b):
        for q in range(length):
            for k in range(length):
                same = bool(seq[r, q] == seq[r, k]) and int(seq[r, k]) >= 0
                mask[r, 0, q, k] = (same and k <= q) or q == k
    return mask


# ------------------------------------------------------------------ names


def test_every_backend_name_is_accepted_and_a_wrong_one_is_refused_with_the_choices():
    assert attention.BACKENDS == ("sdpa", "eager", "flex_attention", "torch_varlen", "flash_attention_2")
    for name in attention.BACKENDS:
        assert attention.validate(name) == name
    for wrong in ("flash_attention_3", "SDPA", "", "flex"):
        with pytest.raises(ValueError) as err:
            attention.validate(wrong)
        message = str(err.value)
        assert repr(wrong) in message and attention.CONFIG_KEY in message
        assert all(name in message for name in attention.BACKENDS)


def test_every_entry_point_checks_the_name():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        build_llm(config={"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1}, attn_implementation="flash")
    llm = tiny_llm()
    with pytest.raises(ValueError, match="unknown attention backend 'flex'"):
        attention.set_backend(llm, "flex")
    assert attention.backend_of(llm) == "sdpa"  # a refused switch changes nothing
    padded = attention.PaddedLayout(SEQ >= 0, positions(SEQ))
    packed = attention.PackedLayout(SEQ, positions(SEQ))
    for layout in (padded, packed):
        with pytest.raises(ValueError, match="one of sdpa, eager"):
            layout.decoder_kwargs("varlen")


def test_torch_varlen_is_registered_with_transformers_when_chosen():
    assert attention.load_kwargs(attention.VARLEN) == {"attn_implementation": "torch_varlen"}
    assert AttentionInterface._global_mapping["torch_varlen"] is va.varlen_attention_forward


def test_the_backend_is_read_and_switched_through_the_module():
    llm = tiny_llm("flex_attention")
    assert attention.backend_of(llm) == attention.backend_of(llm.config) == "flex_attention"
    attention.set_backend(llm, attention.VARLEN)
    assert attention.backend_of(llm) == "torch_varlen"
    assert attention.bare_decoder_name("torch_varlen") == "sdpa"  # cannot run without segment offsets
    assert [attention.bare_decoder_name(n) for n in ("sdpa", "eager", "flex_attention", "flash_attention_2")] == [
        "sdpa", "eager", "flex_attention", "flash_attention_2"
    ]  # fmt: skip
    assert attention.fastest_packed_backend() in ("flash_attention_2", "flex_attention")


# ------------------------------------------------------------------ decoder keyword arguments


@pytest.mark.parametrize("backend", ["sdpa", "eager", "flex_attention", "flash_attention_2"])
def test_padded_rows_give_the_padding_mask_and_positions(backend):
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])  # right- and left-padded rows
    pos = torch.tensor([[0, 1, 2, 0], [0, 0, 1, 2]])
    kw = attention.PaddedLayout(mask, pos).decoder_kwargs(backend)
    assert kw.keys() == {"attention_mask", "position_ids"}
    assert kw["attention_mask"] is mask and kw["position_ids"] is pos


def test_padded_rows_under_torch_varlen_are_one_segment_per_row_plus_padding():
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    layout = attention.PaddedLayout(mask, torch.zeros(2, 4, dtype=torch.long))
    assert layout.seq_ids.tolist() == [[0, 0, 0, -1], [-1, 0, 0, 0]]
    kw = layout.decoder_kwargs("torch_varlen")
    assert kw["attention_mask"] is mask  # the padding mask still goes along, as before
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 4, 5, 8] and kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"]
    assert kw["max_length_q"] == kw["max_length_k"] == 4  # the longest segment in whole blocks, capped at L


def test_packed_rows_under_sdpa_get_the_dense_block_diagonal_mask():
    layout = attention.PackedLayout(SEQ, positions(SEQ))
    kw = layout.decoder_kwargs("sdpa")
    assert kw.keys() == {"attention_mask", "position_ids"} and kw["position_ids"] is layout.position_ids
    assert kw["attention_mask"].shape == (2, 1, 12, 12) and kw["attention_mask"].dtype == torch.bool
    assert torch.equal(kw["attention_mask"], old_dense_rule(SEQ))
    assert torch.equal(layout.attention_mask, SEQ >= 0)


def test_packed_rows_under_eager_get_the_same_rule_as_an_additive_bias():
    # eager attention adds a 4D mask to its logits as it is: a bool mask would add 1/0 and mask nothing
    kw = attention.PackedLayout(SEQ, positions(SEQ)).decoder_kwargs("eager")
    bias = kw["attention_mask"]
    assert bias.shape == (2, 1, 12, 12) and bias.dtype == torch.float32
    rule = old_dense_rule(SEQ)
    assert bool((bias[rule] == 0).all()) and bool((bias[~rule] == torch.finfo(torch.float32).min).all())


def test_packed_rows_under_flash_attention_get_no_mask_only_the_restarting_positions():
    layout = attention.PackedLayout(SEQ, positions(SEQ))
    kw = layout.decoder_kwargs("flash_attention_2")
    assert kw == {"position_ids": layout.position_ids, "attention_mask": None}
    assert kw["position_ids"][0, :9].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]


def test_packed_rows_under_torch_varlen_get_segment_offsets_and_no_mask():
    kw = attention.PackedLayout(SEQ, positions(SEQ)).decoder_kwargs("torch_varlen")
    assert kw["attention_mask"] is None
    # row 0: 3 | 4 | 2 | padding 3; row 1: 5 | 4 | padding 3 (offsets in the flattened [B * L] stream)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 7, 9, 12, 17, 21, 24]
    assert kw["max_length_q"] == kw["max_length_k"] == 12  # the longest (5) in whole 128-token blocks, capped at L


def test_packed_rows_under_flex_attention_get_the_block_mask_of_the_dense_rule():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    seq = packed_rows([[100, 60, 40, 30], [129, 100]], 256)  # crosses the 128-token blocks
    kw = attention.PackedLayout(seq, positions(seq)).decoder_kwargs("flex_attention")
    block_mask = kw["attention_mask"]
    assert isinstance(block_mask, flex.BlockMask)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 256, 16)  # [B, H, L, D] each
    dense = attention.block_diagonal_mask(seq)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(flex.flex_attention(q, k, v, block_mask=block_mask), want, rtol=1e-5, atol=1e-5)


def decoder_hidden(llm, embeds, kwargs):
    with torch.no_grad():
        return llm.get_decoder()(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state


@pytest.mark.parametrize("backend", ["sdpa", "eager", "torch_varlen", "flex_attention"])
def test_a_decoder_on_packed_rows_gives_each_sample_its_padded_hidden_states(backend):
    """Packed rows under ``backend`` against every sample alone in a padded batch (SDPA)."""
    if backend == "flex_attention":
        pytest.importorskip("torch.nn.attention.flex_attention")
    llm = tiny_llm(layers=2)
    seq = packed_rows([[5, 7, 3], [9]], 16)
    torch.manual_seed(1)
    embeds = torch.randn(2, 16, llm.config.hidden_size)
    attention.set_backend(llm, backend)
    packed = decoder_hidden(llm, embeds, attention.PackedLayout(seq, positions(seq)).decoder_kwargs(backend))
    attention.set_backend(llm, "sdpa")
    for r, s in ((0, 0), (0, 1), (0, 2), (1, 0)):
        at = seq[r] == s
        n = int(at.sum())
        alone = torch.zeros(1, 16, embeds.shape[-1])
        alone[0, :n] = embeds[r, at]
        mask = torch.arange(16)[None] < n
        layout = attention.PaddedLayout(mask, torch.arange(16)[None])
        torch.testing.assert_close(packed[r, at], decoder_hidden(llm, alone, layout.decoder_kwargs("sdpa"))[0, :n])


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize(
    ("trained", "generating"),
    [("sdpa", "sdpa"), ("eager", "eager"), ("flex_attention", "sdpa"), ("torch_varlen", "sdpa")],
)
def test_generation_runs_sdpa_for_the_training_only_kernels_and_restores_them(trained, generating):
    llm = tiny_llm(trained)
    with attention.generation_backend(llm) as inside:
        assert inside == generating == attention.backend_of(llm)
        ids = torch.randint(0, 128, (1, 5))
        out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
        assert out.shape == (1, 7)
    assert attention.backend_of(llm) == trained


@pytest.mark.parametrize("trained", ["flex_attention", "torch_varlen"])
def test_the_training_backend_comes_back_after_an_exception(trained):
    llm = tiny_llm(trained)
    with pytest.raises(RuntimeError, match="boom"), attention.generation_backend(llm):
        assert attention.backend_of(llm) == "sdpa"
        raise RuntimeError("boom")
    assert attention.backend_of(llm) == trained


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_packed_kwargs_under_torch_varlen_match_sdpa_on_the_gpu_in_bf16():
    if not torch.cuda.is_available() or not va.kernel_available():
        pytest.skip("needs CUDA and torch.nn.attention.varlen")
    llm = tiny_llm(layers=2).cuda()
    seq = packed_rows([[150, 90, 30], [250]], 256).cuda()
    torch.manual_seed(1)
    embeds = torch.randn(2, 256, llm.config.hidden_size, device="cuda")
    layout = attention.PackedLayout(seq, positions(seq.cpu()).cuda())
    out = {}
    for backend in ("sdpa", "torch_varlen"):
        attention.set_backend(llm, backend)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out[backend] = decoder_hidden(llm, embeds, layout.decoder_kwargs(backend)).float()
    real = seq >= 0
    torch.testing.assert_close(out["torch_varlen"][real], out["sdpa"][real], rtol=3e-2, atol=3e-2)
