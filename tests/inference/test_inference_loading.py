"""Inference: loading every kind of weights, KV-cache equivalence, context accounting."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from hydra.utils import instantiate

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.inference.engine import ChatEngine
from eve_lightning.inference.generate import GenerationConfig, PromptTooLongError, generate_tokens
from eve_lightning.inference.loading import load_model
from eve_lightning.models.export_format import save_export
from tests.helpers.official_checkpoint import official_layout, save_sharded_bin
from tests.helpers.views import make_batch, photo


def tiny(cfg, seed=0, **eve):
    cfg = copy.deepcopy(cfg)
    cfg["eve"].update(eve)
    torch.manual_seed(seed)
    return instantiate(cfg, _convert_="all").float().eval()


def prefill_logits(vlm, batch):
    mm = vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
    with torch.no_grad():
        return vlm.llm(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask.long()).logits


def test_export_round_trip_gives_identical_logits(tiny_model_cfg, tmp_path):
    model = tiny(tiny_model_cfg)
    save_export(tmp_path / "export", model.vlm, tokenizer_files=[default_tokenizer_path()])
    loaded = load_model(tmp_path / "export", device="cpu")
    assert loaded.kind == "export" and loaded.vlm.aligner is None and loaded.image_size == 672
    batch = make_batch(672)
    assert torch.equal(prefill_logits(model.vlm, batch), prefill_logits(loaded.vlm, batch))


def official_folder(cfg, folder):
    """A tiny checkpoint in the official EVE v1 layout: sharded .bin + index, mm_* config keys, tokenizer.model."""
    model = tiny(cfg, vision_heads=8)  # the official PEL always has 8 heads
    save_sharded_bin(official_layout(model), folder)
    llm_cfg = model.vlm.llm.config.to_dict()
    config = {k: llm_cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")}
    config |= {k: llm_cfg[k] for k in ("num_attention_heads", "num_key_value_heads", "max_position_embeddings")}
    config |= {
        "architectures": ["EVELlamaForCausalLM"],
        "model_type": "eve",
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "mm_vision_tower": "openai/eve-patch14-anypixel-672",
        "mm_vision_tower_clip": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": 64,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "requires_cliploss": True,
        "use_mm_proj": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(default_tokenizer_path(), folder / "tokenizer.model")
    return model


def test_official_layout_checkpoint_loads_and_generates(tiny_model_cfg, tmp_path):
    native = official_folder(tiny_model_cfg, tmp_path)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.kind == "official" and loaded.image_size == 672
    batch = make_batch(672)
    assert torch.equal(prefill_logits(native.vlm, batch), prefill_logits(loaded.vlm, batch))
    engine = ChatEngine(loaded)
    answer = engine.chat(photo("astronaut"), [("user", "What is in the picture?")], GenerationConfig(max_new_tokens=5))
    assert isinstance(answer, str)
    assert engine.last_stats["new_tokens"] >= 1
    assert engine.last_stats["prompt_tokens"] > 601  # text + the 601 tokens of a square image


def test_greedy_generation_with_and_without_kv_cache_is_identical(tiny_model_cfg):
    vlm = tiny(tiny_model_cfg).vlm
    batch = make_batch(672)  # 4 rows of different lengths -> left padding after expansion
    runs = []
    for use_cache in (True, False):
        cfg = GenerationConfig(max_new_tokens=8, use_cache=use_cache)
        tokens = list(
            generate_tokens(
                vlm,
                batch["input_ids"],
                batch["attention_mask"],
                batch["pixel_values"],
                batch["pixel_mask"],
                eos_id=None,
                cfg=cfg,
                context_length=4096,
            )
        )
        runs.append(torch.stack(tokens, 1))  # [B, 8]
    assert runs[0].shape == (4, 8)
    assert torch.equal(runs[0], runs[1])


def test_prompt_longer_than_the_context_is_a_clear_error(tiny_model_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_model_cfg)
    cfg["llm"]["config"]["max_position_embeddings"] = 512
    model = tiny(cfg, align_weight=0.0)
    save_export(tmp_path / "e", model.vlm, tokenizer_files=[default_tokenizer_path()])
    engine = ChatEngine(load_model(tmp_path / "e", device="cpu"))
    assert engine.loaded.context_length == 512
    with pytest.raises(PromptTooLongError, match=r"the prompt takes 6\d\d tokens .* context is 512"):
        engine.chat(photo("astronaut"), [("user", "Describe the image.")])
    # without the image the same question fits, and the answer is capped by the room left
    assert isinstance(engine.chat(None, [("user", "Describe the image.")], GenerationConfig(max_new_tokens=3)), str)
