"""The copy step makes EVEv2's decoder the plain Qwen2 LM; vision copies learn from image tokens only."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from eve_lightning.models.evev2 import build_evev2_decoder, copy_text_to_vision
from eve_lightning.models.evev2.decoder import vision_text_pairs
from tests.models.evev2.helpers import VOCAB, model_inputs_padded_text, tiny_llm_config, tiny_vlm


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory):
    """A tiny random transformers Qwen2ForCausalLM saved in HF format."""
    torch.manual_seed(0)
    cfg = Qwen2Config(**tiny_llm_config())
    model = Qwen2ForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(folder)
    return folder


def text_batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (3, 14), generator=gen)
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_after_the_copy_step_the_decoder_is_the_plain_qwen2_lm(qwen2_folder, attn):
    plain = Qwen2ForCausalLM.from_pretrained(qwen2_folder, attn_implementation=attn).eval()
    ours = build_evev2_decoder(path=str(qwen2_folder), attn_implementation=attn).eval()
    pairs = list(vision_text_pairs(ours))
    assert len(pairs) == 3 * 12  # per layer: 2 norms, q/k/v weights and biases, o, 3 MLP matrices
    assert all(torch.equal(vision, text) for _, vision, text in pairs)  # copies the folder lacked were filled
    ids, mask = text_batch()
    real = mask.bool()
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask).logits
        random_mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.5
        for vision_mask in (None, torch.zeros_like(real), random_mask):  # equal copies: routing cannot matter
            got = ours(input_ids=ids, attention_mask=mask, vision_mask=vision_mask).logits
            torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_copy_step_copies_every_vision_tensor_from_its_text_tensor():
    llm = tiny_vlm(perturb=True).llm
    pairs = list(vision_text_pairs(llm))
    assert not any(torch.equal(vision, text) for _, vision, text in pairs)
    assert copy_text_to_vision(llm) == len(pairs)
    assert all(torch.equal(vision, text) and vision is not text for _, vision, text in pairs)
    names = {name for name, _, _ in pairs}
    assert "layers.0.self_attn.moe_q_proj.bias" in names and "layers.2.moe_mlp.down_proj.weight" in names
    assert "layers.1.moe_post_attention_layernorm.weight" in names


def vision_grads(llm):
    return {name: vision.grad for name, vision, _ in vision_text_pairs(llm)}


def test_vision_copies_get_gradient_only_from_image_tokens():
    llm = tiny_vlm().llm.train()
    ids, mask = text_batch()
    for vision_mask in (None, torch.zeros(ids.shape, dtype=torch.bool)):
        llm.zero_grad(set_to_none=True)
        llm(input_ids=ids, attention_mask=mask, vision_mask=vision_mask).logits.sum().backward()
        assert all(g is None for g in vision_grads(llm).values())  # never ran: no gradient at all
        assert all(p.grad is not None for n, p in llm.named_parameters() if "moe_" not in n)

    llm.zero_grad(set_to_none=True)
    one = torch.zeros(ids.shape, dtype=torch.bool)
    one[0, 5] = True  # a single image token
    llm(input_ids=ids, attention_mask=mask, vision_mask=one).logits.sum().backward()
    got = vision_grads(llm)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in got.values()), [
        n for n, g in got.items() if g is None
    ]


def test_a_text_only_training_batch_gives_the_vision_parts_zero_gradient():
    """Through the VLM, unused vision parts still join the graph (for DDP) but with an exact zero gradient."""
    vlm = tiny_vlm()
    out = vlm(**model_inputs_padded_text())
    assert out.stats["n_image_tokens"] == 0
    out.loss.backward()
    for name, p in vlm.named_parameters():
        if "moe_" in name or name.startswith("patch_embed."):
            assert p.grad is not None and float(p.grad.abs().max()) == 0.0, name


def test_a_step_without_image_tokens_runs_no_vision_module():
    llm = tiny_vlm().llm.eval()
    calls = []
    for name, module in llm.named_modules():
        if name.rsplit(".", 1)[-1].startswith("moe_"):
            module.register_forward_hook(lambda *_, n=name: calls.append(n))
    ids, mask = text_batch()
    with torch.no_grad():
        llm(input_ids=ids, attention_mask=mask)
        llm(input_ids=ids, attention_mask=mask, vision_mask=torch.zeros(ids.shape, dtype=torch.bool))
        assert calls == []
        one = torch.zeros(ids.shape, dtype=torch.bool)
        one[2, -1] = True
        llm(input_ids=ids, attention_mask=mask, vision_mask=one)
    assert len(set(calls)) == 3 * 7  # both norms, q, k, v, o and the MLP of every layer ran
