"""KV-cached greedy decoding of EVEv2 equals re-running the whole sequence, and decoding runs text weights only.

The loop is the one of ``eve_lightning.inference.generate`` (left-padded prefill from ``prepare_inputs``, then
one token per step), with the image-token mask passed to the prefill (``EveV2VLM.llm_kwargs``).
"""

from __future__ import annotations

import torch

from tests.models.evev2.helpers import LANDSCAPE, SQUARE, padded_batch, tiny_vlm


def kv_cache(out):
    """The cache of an output (``cache`` in newer transformers, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def greedy(vlm, batch, steps, use_cache, calls=None):
    mm = vlm.prepare_inputs(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["pixel_mask"],
        max_length=10**9,
        pad_side="left",
    )
    llm = vlm.llm
    mask, positions, embeds, vision = mm.attention_mask.long(), mm.position_ids, mm.inputs_embeds, mm.vision_mask
    out = llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=use_cache,
        logits_to_keep=1,
        **vlm.llm_kwargs(mm),
    )
    if calls is not None:
        calls.clear()  # count vision-module calls of the decoding steps only
    tokens, logits = [], []
    for _ in range(steps):
        logits.append(out.logits[:, -1])
        token = out.logits[:, -1].argmax(-1)  # [B]
        tokens.append(token)
        next_pos = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = torch.cat([positions, next_pos], 1)
        if use_cache:
            out = llm(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                cache=kv_cache(out),
                use_cache=True,
                logits_to_keep=1,
            )
        else:
            embeds = torch.cat([embeds, llm.get_input_embeddings()(token[:, None])], 1)
            vision = torch.cat([vision, torch.zeros_like(vision[:, :1])], 1)
            out = llm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
                vision_mask=vision,
            )
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def test_kv_cached_greedy_generation_equals_the_uncached_one():
    vlm = tiny_vlm().eval()
    batch = padded_batch([(9, 4, SQUARE), (6, 1, LANDSCAPE)])  # two image prompts of different lengths
    calls: list[str] = []
    for name, module in vlm.llm.named_modules():
        if name.rsplit(".", 1)[-1].startswith("moe_"):
            module.register_forward_hook(lambda *_, n=name: calls.append(n))
    with torch.no_grad():
        cached, cached_logits = greedy(vlm, batch, steps=6, use_cache=True, calls=calls)
        assert calls == []  # the cached steps carried text tokens only: no vision weight ran
        plain, plain_logits = greedy(vlm, batch, steps=6, use_cache=False)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert len(set(calls)) > 0  # the uncached runs re-ran the image tokens through the vision copies


def test_the_prefill_needs_the_image_mask():
    """Without ``llm_kwargs`` the image tokens would run through the text weights: other logits."""
    vlm = tiny_vlm().eval()
    batch = padded_batch([(9, 4, SQUARE)])
    mm = vlm.prepare_inputs(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"], pad_side="left"
    )
    args = dict(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask.long(), position_ids=mm.position_ids)
    with torch.no_grad():
        with_mask = vlm.llm(**args, **vlm.llm_kwargs(mm)).logits[:, -1]
        without = vlm.llm(**args).logits[:, -1]
    assert float((with_mask - without).abs().max()) > 1e-3
