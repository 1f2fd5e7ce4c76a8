"""The benchmark's EVEv2 building blocks on a tiny model (CPU, float32): v2 samples, the routed (ours) and dense
paths giving the same first loss, the reference path without an aligner, and the routed FLOP count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eve_lightning.bench.train import decoder_flops, draw_samples, packed_batch, padded_batch, reference_loss, set_path
from eve_lightning.data.geometry import max_image_tokens
from eve_lightning.models.evev2 import copy_text_to_vision, is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.shapes import EVEV2_DECODERS, QWEN25_7B, build_random_model
from eve_lightning.utils.flops import samples_flops
from tests.helpers.repo_paths import CONF

SIZE = 256  # px: small images keep the CPU test fast (8 x 8 cells for a square image)


def tiny_evev2():
    torch.manual_seed(0)
    model = build_random_model(str(CONF / "model" / "evev2_tiny.yaml"), "pretrain", torch.device("cpu"), "sdpa")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # vision copies unlike their text weights, so that routing matters
        for _, vision, _ in vision_text_pairs(model):
            vision.add_(torch.randn(vision.shape, generator=gen) * 0.05)
    return model.float()


def test_evev2_samples_follow_the_v2_image_rule():
    samples = draw_samples("pretrain", 20, np.random.default_rng(0), "evev2", 800)
    tokens = [s["geom"].num_image_tokens for s in samples]
    assert all(640 <= t <= 670 for t in tokens)  # area about 800^2 in 32-px cells, 1 + h (w + 1) tokens
    assert max_image_tokens(800, "evev2") == 651 and max_image_tokens(1600, "evev2") == 2551
    square = [s for s in samples if s["geom"].width == s["geom"].height]
    assert square and all(s["geom"].num_image_tokens == 651 for s in square)
    batch = packed_batch(samples[:4], 4096)
    assert "teacher_pixel_values" not in batch
    bands = [s["geom"] for s in samples[:4]]
    assert batch["pixel_values"].shape[1:] == (3, max(g.height for g in bands), max(g.width for g in bands))


@pytest.mark.parametrize("workload", ["pretrain", "sft"])
def test_ours_dense_and_reference_give_the_same_first_loss(workload):
    model = tiny_evev2()
    samples = draw_samples(workload, 5, np.random.default_rng(3), "evev2", SIZE)
    if workload == "sft":
        samples[0]["geom"] = None  # a text-only sample
        samples[0]["ids"][1] = 5
    packed = packed_batch(samples, 4096)
    assert packed["input_ids"].shape[0] < len(samples)
    set_path(model, "ours")
    assert model.vlm.llm.config.routing == "routed"
    ours = model(packed).loss
    set_path(model, "dense")
    assert model.vlm.llm.config.routing == "dense" and model.vlm.config.routing == "dense"
    dense = model(packed).loss
    ref = reference_loss(model, padded_batch(samples))  # routing dense: the original's way, per sample
    torch.testing.assert_close(dense, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=1e-5)
    set_path(model, "ours")
    copy_text_to_vision(model)  # the image tokens ran the vision copies: with copies equal to text, another loss
    assert abs(float(model(packed).loss) - float(ours)) > 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_flops_count_one_branch_per_token_and_the_lm_head_at_supervised_positions(tied):
    from omegaconf import OmegaConf

    from eve_lightning.bench.train import sample_tokens, supervised_count
    from eve_lightning.models.evev2 import build_evev2_model

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "evev2_tiny.yaml"), resolve=True)
    cfg["llm"]["config"]["tie_word_embeddings"] = tied
    model = build_evev2_model({"config": cfg["llm"]["config"], "attn_implementation": "sdpa"}, cfg["eve"])
    llm = model.vlm.llm
    embed, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    assert (head is embed) == tied
    text = sum(p.numel() for n, p in llm.named_parameters() if not is_vision_parameter(n))  # a tied head once
    vision = sum(p.numel() for n, p in llm.named_parameters() if is_vision_parameter(n))
    assert vision > 0
    cfg = llm.config
    body = text - embed.numel() - (0 if tied else head.numel())  # one branch, without the embedding and the head
    samples = draw_samples("pretrain", 3, np.random.default_rng(0), "evev2", SIZE)
    lengths, supervised = [sample_tokens(s) for s in samples], [supervised_count(s) for s in samples]
    assert supervised == [len(s["ids"]) - 2 for s in samples]  # a caption: every text token's label
    shape = (cfg.num_hidden_layers, cfg.hidden_size)
    # the head (the embedding itself when tied: it still runs) counts at the supervised positions only
    want = samples_flops(body, *shape, lengths, True, head.numel(), supervised)
    assert decoder_flops(model, lengths, True, supervised) == want
    assert want == pytest.approx(
        samples_flops(body + head.numel(), *shape, lengths, True) - 6 * head.numel() * (sum(lengths) - sum(supervised))
    )
    # without supervised positions, the head at every token: the earlier convention (mfu_head_every_token)
    assert decoder_flops(model, lengths, True) == samples_flops(body + head.numel(), *shape, lengths, True)


def test_evev2_shapes_are_the_configs_and_prealign_is_refused():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "model" / "evev2_1b.yaml").llm.config
    assert {k: cfg[k] for k in EVEV2_DECODERS["evev2_1b"]} == EVEV2_DECODERS["evev2_1b"]
    assert QWEN25_7B["hidden_size"] == 3584 and QWEN25_7B["num_hidden_layers"] == 28
    model = build_random_model("evev2_7b", "sft", torch.device("meta"), "sdpa")
    assert model.teacher is None and model.vlm.aligner is None and not hasattr(model.vlm, "projector")
    routed = sum(p.numel() for n, p in model.vlm.llm.named_parameters() if not is_vision_parameter(n))
    assert 7.0e9 < routed < 7.8e9  # Qwen2.5-7B: 7.6B
    with pytest.raises(ValueError, match="EVEv2 has no prealign workload"):
        build_random_model("evev2_1b", "prealign", torch.device("meta"), "sdpa")


def test_dense_is_refused_for_eve_v1():
    model = build_random_model(str(CONF / "model" / "tiny.yaml"), "pretrain", torch.device("meta"), "sdpa")
    with pytest.raises(ValueError, match="the dense path is EVEv2's"):
        set_path(model, "dense")
