"""The benchmark's two paths compute the same loss: the original's per-sample way on padded rows, and ours on
packed rows (CPU, float32, tiny model)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.bench.train import draw_samples, packed_batch, padded_batch, reference_loss
from tests.helpers.repo_paths import CONF


@pytest.mark.parametrize("workload", ["pretrain", "sft"])
def test_reference_and_ours_give_the_same_loss(workload):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg = copy.deepcopy(cfg)
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all").float()
    rng = np.random.default_rng(3)
    samples = draw_samples(workload, 6, rng)
    if workload == "sft":
        samples[0]["geom"] = None  # a text-only sample
        samples[0]["ids"][1] = 5
    padded = padded_batch(samples)
    packed = packed_batch(samples, 4096)
    assert packed["input_ids"].shape[0] < len(samples)
    ours = model(packed).loss
    ref = reference_loss(model, padded)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    balanced, first_fit = packed_batch(samples, 2048, balanced=True), packed_batch(samples, 2048)
    assert balanced["input_ids"].shape[0] == first_fit["input_ids"].shape[0]  # the same number of rows
    real_len = lambda b: int(model.vlm.prepare_inputs(  # noqa: E731  (decoder row length: real expanded tokens)
        b["input_ids"], b["attention_mask"], b.get("pixel_values"), b.get("pixel_mask"),
        position_ids=b["position_ids"], seq_ids=b["seq_ids"]).inputs_embeds.shape[1])  # fmt: skip
    assert real_len(balanced) <= real_len(first_fit)  # never more padding in the decoder
    if workload == "pretrain":  # these six first-fit into a full row and a short one: balanced is shorter
        assert real_len(balanced) < real_len(first_fit)
    torch.testing.assert_close(model(balanced).loss, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_flex_attention_block_mask_gives_the_padded_loss():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    torch.manual_seed(0)
    sdpa = instantiate(copy.deepcopy(cfg), _convert_="all").float()
    cfg["llm"]["attn_implementation"] = "flex_attention"
    torch.manual_seed(0)
    flex = instantiate(copy.deepcopy(cfg), _convert_="all").float()
    samples = draw_samples("sft", 6, np.random.default_rng(3))
    with torch.no_grad():  # FlexAttention has no CPU backward; the GPU benchmark runs it for real
        a = sdpa(padded_batch(samples)).loss
        b = flex(packed_batch(samples, 4096)).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forward_timer_sums_every_call_of_the_timed_modules():
    from eve_lightning.bench.train import ForwardTimer

    slow, fast = torch.nn.Linear(512, 512), torch.nn.Identity()
    timer = ForwardTimer({"slow": slow, "fast": fast})
    x = torch.randn(256, 512)
    for _ in range(3):  # called several times per step, like the reference path's per-sample patch embedding
        fast(slow(x))
    first = timer.seconds()
    assert set(first) == {"slow", "fast"} and first["slow"] > 0 and len(timer.spans["slow"]) == 3
    timer.reset()
    assert timer.seconds() == {"slow": 0.0, "fast": 0.0}
    timer.remove()
    slow(x)
    assert timer.spans["slow"] == []


def test_bench_builds_a_model_from_a_config_file_and_freezes_the_decoder_for_prealign():
    from eve_lightning.models.shapes import build_random_model

    model = build_random_model(str(CONF / "model" / "tiny.yaml"), "prealign", torch.device("cpu"), "sdpa")
    llm = model.vlm.llm
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in llm.parameters())
    assert model.vlm.config.max_length == 4096 and model.teacher is not None
    assert all(p.requires_grad for p in model.vlm.patch_embed.parameters())


def test_profile_writes_a_trace_and_the_top_operators(tmp_path):
    from eve_lightning.bench.train import profile_path
    from eve_lightning.models.shapes import build_random_model

    model = build_random_model(str(CONF / "model" / "tiny.yaml"), "pretrain", torch.device("cpu"), "sdpa").float()
    batch = padded_batch(draw_samples("pretrain", 2, np.random.default_rng(0)))
    table = profile_path("ours", model, [batch], 1, tmp_path)
    assert (tmp_path / "trace_ours.json").stat().st_size > 1000
    assert "aten::" in table and (tmp_path / "top_ops_ours.txt").read_text() == table


def test_decoder_flops_count_the_lm_head_at_the_supervised_positions():
    """A sample's supervised count is what the model's loss takes logits at; the head counts there, the rest of the
    decoder (input embedding aside) at every token."""
    from eve_lightning.bench.train import decoder_flops, sample_tokens, supervised_count
    from eve_lightning.models.losses import supervised_positions
    from eve_lightning.models.shapes import build_random_model
    from eve_lightning.utils.flops import samples_flops

    model = build_random_model(str(CONF / "model" / "tiny.yaml"), "pretrain", torch.device("cpu"), "sdpa")
    samples = draw_samples("sft", 4, np.random.default_rng(5))
    samples[0]["geom"] = None  # a text-only sample
    samples[0]["ids"][1] = 5
    lengths, supervised = [sample_tokens(s) for s in samples], [supervised_count(s) for s in samples]
    text = [len(s["ids"]) - 2 for s in samples]  # L text tokens after BOS and the placeholder: labels from L // 2 on
    assert supervised == [n + 2 - n // 2 for n in text]
    batch = packed_batch(samples, 4096)
    mm = model.vlm.prepare_inputs(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"], batch["labels"],
        position_ids=batch["position_ids"], seq_ids=batch["seq_ids"],
    )  # fmt: skip
    assert int(mm.attention_mask.sum()) == sum(lengths)  # expanded tokens
    assert len(supervised_positions(mm.labels)[0]) == sum(supervised)  # the positions the LM head runs at
    llm = model.vlm.llm
    cfg = llm.config
    head = cfg.vocab_size * cfg.hidden_size
    assert llm.get_output_embeddings().weight.numel() == head
    body = sum(p.numel() for p in llm.parameters()) - 2 * head  # without the input embedding and the head
    for trained in (True, False):
        per_param = 6 if trained else 4
        every_token = decoder_flops(model, lengths, trained)
        assert every_token == samples_flops(body + head, cfg.num_hidden_layers, cfg.hidden_size, lengths, trained)
        useful = decoder_flops(model, lengths, trained, supervised)
        assert useful == pytest.approx(every_token - per_param * head * (sum(lengths) - sum(supervised)))
