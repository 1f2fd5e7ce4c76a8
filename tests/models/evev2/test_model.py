"""EveV2VLM around the decoder: token splice and modality mask, packed = padded, checkpointing, compile, configs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.models.build import EveWithTeacher
from eve_lightning.models.checkpointing import enable_checkpointing
from eve_lightning.models.compile import compile_decoder_layers
from eve_lightning.models.evev2 import EveV2Config, EveV2VLM, build_evev2_model, is_vision_parameter
from eve_lightning.utils.config_checks import ALLOWED_TARGETS
from tests.helpers.repo_paths import CONF
from tests.models.evev2.helpers import SAMPLES, image_tokens, packed_batch, padded_batch, tiny_vlm

INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_mask", "position_ids", "seq_ids")


def inputs(batch):
    return {k: batch[k] for k in INPUTS if k in batch}


def loss_and_grads(vlm, batch):
    vlm.zero_grad(set_to_none=True)
    out = vlm(**inputs(batch))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}


def test_splice_puts_each_image_at_its_placeholder_and_marks_exactly_its_tokens():
    vlm = tiny_vlm()
    batch = padded_batch()
    mm = vlm.prepare_inputs(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_mask", "labels")}
    )
    embed = vlm.llm.get_input_embeddings()
    image_rows = [b for b, (_, at, _) in enumerate(SAMPLES) if at is not None]
    images = vlm.patch_embed(batch["pixel_values"][image_rows], batch["pixel_mask"][image_rows])
    starts = [0, *images.lengths.cumsum(0).tolist()[:-1]]
    for b, (n, at, band) in enumerate(SAMPLES):
        ids = batch["input_ids"][b, :n]
        if at is None:
            assert not mm.vision_mask[b].any()
            torch.testing.assert_close(mm.inputs_embeds[b, :n], embed(ids))
            continue
        k = image_tokens(band)
        assert mm.vision_mask[b].nonzero().flatten().tolist() == list(range(at, at + k))
        i = image_rows.index(b)
        torch.testing.assert_close(mm.inputs_embeds[b, at : at + k], images.tokens[starts[i] : starts[i] + k])
        torch.testing.assert_close(mm.inputs_embeds[b, :at], embed(ids[:at]))
        torch.testing.assert_close(mm.inputs_embeds[b, at + k : n - 1 + k], embed(ids[at + 1 :]))
        assert (mm.labels[b, at : at + k] == IGNORE_INDEX).all()
        assert int(mm.attention_mask[b].sum()) == n - 1 + k


def test_packed_rows_give_the_loss_and_gradients_of_padded_rows():
    vlm = tiny_vlm()
    padded = loss_and_grads(vlm, padded_batch())
    packed = loss_and_grads(vlm, packed_batch([[0, 1, 2], [3, 4]]))
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    assert packed[1].keys() == padded[1].keys()
    for name in padded[1]:
        torch.testing.assert_close(packed[1][name], padded[1][name], rtol=1e-4, atol=1e-5)


def test_max_length_cuts_rows_after_expansion_and_counts_the_cut_tokens():
    vlm = tiny_vlm(max_length=20)
    batch = padded_batch()
    out = vlm(**inputs(batch))
    lengths = [n - 1 + (image_tokens(band) if band else 1) for n, _, band in SAMPLES]
    assert out.stats["seq_len"] == 20
    assert out.n_truncated == sum(max(0, n - 20) for n in lengths)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    vlm = tiny_vlm().train()
    batch = packed_batch([[0, 1, 2], [3, 4]])
    want = loss_and_grads(vlm, batch)
    assert enable_checkpointing(vlm.llm) == 3
    got = loss_and_grads(vlm, batch)
    torch.testing.assert_close(got[0], want[0])
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients():
    torch._dynamo.reset()
    eager, compiled = tiny_vlm(), tiny_vlm()
    compile_decoder_layers(compiled.llm, backend="aot_eager")
    for batch in (padded_batch(), packed_batch([[0, 1, 2], [3, 4]]), padded_batch([(12, None, None), (9, None, None)])):
        want, got = loss_and_grads(eager, batch), loss_and_grads(compiled, batch)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        for name in want[1]:
            torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=1e-6)


def test_the_training_wrapper_drives_it_like_a_v1_model_without_alignment():
    model = EveWithTeacher(tiny_vlm(), None)
    out = model(padded_batch())
    assert float(out.loss_align) == 0.0 and out.n_align_images == 0 and out.terms is not None
    assert model.vlm.config.align_weight == 0.0
    with pytest.raises(ValueError, match="no CLIP teacher"):
        model.vlm(**inputs(padded_batch()), teacher_features=torch.zeros(1, 4, 8))


def test_input_errors_name_the_problem():
    vlm = tiny_vlm()
    batch = padded_batch()
    two = batch["input_ids"].clone()
    two[1, 5] = IMAGE_TOKEN_INDEX
    with pytest.raises(ValueError, match="more than one image placeholder"):
        vlm.prepare_inputs(two, batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
    with pytest.raises(ValueError, match="no pixel_values / pixel_mask"):
        vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ValueError, match="moe_parts"):
        EveV2Config(moe_parts=["layernorm", "attention"])
    with pytest.raises(ValueError, match="routing"):
        EveV2Config(routing="sparse")
    assert EveV2Config(moe_parts="layernorm-self_attn-mlp").moe_parts == ["layernorm", "self_attn", "mlp"]


def test_no_vision_copies_for_stage_0():
    vlm = tiny_vlm(moe_parts=[], perturb=False)
    assert not any(is_vision_parameter(n) for n, _ in vlm.named_parameters())
    out = vlm(**inputs(padded_batch()))
    out.loss.backward()
    assert vlm.patch_embed.class_embedding.grad is not None


# --------------------------------------------------------------------------- shipped configs


def count(params):
    return sum(p.numel() for p in params)


def test_tiny_config_builds_and_trains_a_step():
    cfg = OmegaConf.load(CONF / "model" / "evev2_tiny.yaml")
    assert cfg._target_ in ALLOWED_TARGETS
    cfg.eve.image_size = 160
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    assert isinstance(model.vlm, EveV2VLM) and model.teacher is None
    out = model(padded_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)


def layer_vision_params(hidden, inter, heads, kv_heads):
    hd = hidden // heads
    attn = 2 * hidden * heads * hd + 2 * hidden * kv_heads * hd + heads * hd + 2 * kv_heads * hd
    return attn + 3 * hidden * inter + 2 * hidden


def test_1b_config_has_qwen2_5_1_5b_widths():
    cfg = OmegaConf.load(CONF / "model" / "evev2_1b.yaml")
    with torch.device("meta"):
        model = instantiate(cfg, _convert_="all")
    llm = model.vlm.llm
    text = [p for n, p in llm.named_parameters() if not is_vision_parameter(n)]
    vision = [p for n, p in llm.named_parameters() if is_vision_parameter(n)]
    assert 1.54e9 < count(text) < 1.55e9  # Qwen2.5-1.5B (tied embeddings)
    assert count(vision) == 28 * layer_vision_params(1536, 8960, 12, 2)
    assert count(model.vlm.patch_embed.parameters()) == 3 * 256 * 1024 + 1024 + 1024 * 4 * 1536 + 1536 + 2 * 1536


def test_7b_config_reads_qwen2_5_7b_instruct_and_builds_the_original_vision_widths():
    cfg = OmegaConf.load(CONF / "model" / "evev2_7b.yaml")
    assert OmegaConf.to_container(cfg)["llm"]["path"] == "${paths.model_dir}/Qwen2.5-7B-Instruct"
    assert list(cfg.eve.moe_parts) == ["layernorm", "self_attn", "mlp"]
    cfg.llm.path = None
    cfg.llm.config = dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = instantiate(cfg, _convert_="all")
    llm = model.vlm.llm
    text = [p for n, p in llm.named_parameters() if not is_vision_parameter(n)]
    vision = [p for n, p in llm.named_parameters() if is_vision_parameter(n)]
    assert 7.61e9 < count(text) < 7.62e9  # Qwen2.5-7B
    assert count(vision) == 28 * layer_vision_params(3584, 18944, 28, 4)
    pe = model.vlm.patch_embed
    assert pe.patch_embedding[0].weight.shape == (1024, 3, 16, 16)
    assert pe.patch_embedding[2].weight.shape == (3584, 1024, 2, 2)


def test_a_missing_llm_folder_and_a_non_qwen2_decoder_are_refused_by_name(tmp_path):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "evev2_tiny.yaml"))
    llm = dict(cfg["llm"], path=str(tmp_path / "Qwen2.5-7B-Instruct"))
    with pytest.raises(FileNotFoundError, match=r"Qwen2\.5-7B-Instruct' does not exist; set model.llm.path"):
        build_evev2_model(llm, cfg["eve"])
    llm = dict(cfg["llm"], config=dict(cfg["llm"]["config"], model_type="llama"))
    with pytest.raises(ValueError, match="EVEv2 decoder is a Qwen2-family model"):
        build_evev2_model(llm, cfg["eve"])
