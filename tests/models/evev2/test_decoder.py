"""The routed EVEv2 decoder equals a compute-both-and-select formulation written here from the spec.

The reference shares only parameters with the model under test: RMSNorm, the SwiGLU MLP, the rotary embedding,
grouped-query attention with an explicit mask (causal, inside each packed sample, padding keys hidden) and the
cross entropy at supervised positions are written in this file. Every token-wise part is computed with BOTH the
text weights and the vision copy for every token, and the vision result is selected where the token is an image
token. Outputs and gradients of all parameters must agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eve_lightning.constants import IGNORE_INDEX
from tests.models.evev2.helpers import SAMPLES, image_tokens, packed_batch, padded_batch, tiny_vlm

PACKED_ROWS = [[0, 1, 2], [3, 4]]  # samples packed per row: text-only + square + landscape; portrait + landscape


# --------------------------------------------------------------------------- reference written from the spec


def rms(weight, eps, x):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def swiglu(mlp, x):
    return F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)


def linear(layer, x):
    return F.linear(x, layer.weight, layer.bias)


def reference_decoder(llm, embeds, vision, allowed, positions):
    """embeds [B, L, H], vision bool [B, L], allowed bool [B, L, L] (query, key), positions [B, L] -> [B, L, H]."""
    cfg = llm.config
    bsz, length, _ = embeds.shape
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh
    eps = cfg.rms_norm_eps
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    angles = positions[..., None].float() * inv_freq  # [B, L, hd/2]
    cos = torch.cat([angles, angles], -1).cos()[:, None]  # [B, 1, L, hd]
    sin = torch.cat([angles, angles], -1).sin()[:, None]

    def rope(x):
        rotated = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + rotated * sin

    def select(text_out, vision_out):  # both computed for every token, the image tokens take the vision result
        return torch.where(vision[..., None], vision_out, text_out)

    h = embeds
    for layer in llm.model.layers:
        a = layer.self_attn
        n = select(rms(layer.input_layernorm.weight, eps, h), rms(layer.moe_input_layernorm.weight, eps, h))
        q = select(linear(a.q_proj, n), linear(a.moe_q_proj, n)).view(bsz, length, nh, hd).transpose(1, 2)
        k = select(linear(a.k_proj, n), linear(a.moe_k_proj, n)).view(bsz, length, nkv, hd).transpose(1, 2)
        v = select(linear(a.v_proj, n), linear(a.moe_v_proj, n)).view(bsz, length, nkv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # [B, nh, L, L]
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, length, nh * hd)
        h = h + select(linear(a.o_proj, out), linear(a.moe_o_proj, out))
        n = select(
            rms(layer.post_attention_layernorm.weight, eps, h), rms(layer.moe_post_attention_layernorm.weight, eps, h)
        )
        h = h + select(swiglu(layer.mlp, n), swiglu(layer.moe_mlp, n))
    return rms(llm.model.norm.weight, eps, h)


def reference_ce(hidden, labels, lm_head_weight):
    nxt = labels[:, 1:]
    rows, cols = (nxt != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = hidden[rows, cols] @ lm_head_weight.T
    return F.cross_entropy(logits, nxt[rows, cols])


def allowed_keys(mm):
    """Causal, inside each packed sample, padding keys hidden (a padding query sees itself)."""
    length = mm.attention_mask.shape[1]
    idx = torch.arange(length)
    causal = idx[None, :] <= idx[:, None]
    if mm.seq_ids is None:
        return causal & mm.attention_mask[:, None, :]
    seq = mm.seq_ids
    same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, None, :] >= 0)
    return (same & causal) | torch.eye(length, dtype=torch.bool)


def model_inputs(batch):
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_mask", "position_ids", "seq_ids")
    return {k: batch[k] for k in keys if k in batch}


def grads(module):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


def make_batch(layout):
    return padded_batch() if layout == "padded" else packed_batch(PACKED_ROWS)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("routing", ["routed", "dense"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", "torch_varlen"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_decoder_equals_compute_both_and_select_outputs_and_gradients(layout, attn, routing):
    vlm = tiny_vlm(attn, routing)
    inputs = model_inputs(make_batch(layout))

    out = vlm(**inputs)
    out.loss.backward()
    got = grads(vlm)
    vlm.zero_grad(set_to_none=True)

    mm = vlm.prepare_inputs(**{k: v for k, v in inputs.items()})
    n_images = sum(image_tokens(band) for _, _, band in SAMPLES if band is not None)
    assert int(mm.vision_mask.sum()) == n_images and out.stats["n_image_tokens"] == n_images
    hidden = reference_decoder(vlm.llm, mm.inputs_embeds, mm.vision_mask, allowed_keys(mm), mm.position_ids)
    loss = reference_ce(hidden, mm.labels, vlm.llm.lm_head.weight)
    loss.backward()
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-5)

    with torch.no_grad():  # the decoder's hidden states at every real token
        dec = vlm.llm.get_decoder()(
            inputs_embeds=mm.inputs_embeds,
            vision_mask=mm.vision_mask,
            use_cache=False,
            **vlm.decoder_kwargs(mm),
        ).last_hidden_state
    real = mm.attention_mask
    torch.testing.assert_close(dec[real], hidden.detach()[real], rtol=1e-5, atol=1e-5)

    want = grads(vlm)
    assert any(got[n].abs().sum() > 0 for n in got if ".moe_" in n)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_the_vision_copies_change_the_result():
    """Guard for the test above: with the vision copies perturbed, routing image tokens to them matters."""
    vlm = tiny_vlm()
    mm = vlm.prepare_inputs(**{k: v for k, v in model_inputs(padded_batch()).items()})
    dec = vlm.llm.get_decoder()
    with torch.no_grad():
        routed = dec(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask, vision_mask=mm.vision_mask)
        text = dec(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask)
    diff = (routed.last_hidden_state - text.last_hidden_state).abs().amax(-1)  # [B, L]
    assert bool((diff[mm.vision_mask] > 1e-3).all())
    first_image_token = int(mm.vision_mask[1].nonzero()[0])
    assert float(diff[1, :first_image_token].max()) == 0.0  # tokens before the image do not see it (causal)
