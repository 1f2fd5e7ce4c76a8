"""The official EVEv2 checkpoint layout (BAAI/EVE-7B-HD-v2.0) imports completely and computes the same function."""

from __future__ import annotations

import json

import pytest
import torch

from eve_lightning.export import main as export_main
from eve_lightning.inference.engine import ChatEngine
from eve_lightning.inference.loading import find_kind, load_model
from eve_lightning.models.export_format import read_export_config
from eve_lightning.models.official_import import read_state_dict
from eve_lightning.models.official_import_v2 import (
    is_official_v2_config,
    load_official_v2_weights,
    official_v2_settings,
    preprocess_facts,
    split_official_v2_state_dict,
)
from tests.helpers.official_checkpoint_v2 import tiny_evev2, write_official_v2
from tests.inference.test_evev2_loading import batch


def logits(vlm, b) -> torch.Tensor:
    with torch.no_grad():
        mm = vlm.prepare_inputs(b["input_ids"], b["attention_mask"], b["pixel_values"], b["pixel_mask"])
        return vlm.llm(
            inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask.long(), **vlm.llm_kwargs(mm)
        ).logits


@pytest.fixture(scope="module")
def source():
    return tiny_evev2(seed=5)


def test_a_complete_official_v2_folder_loads_with_a_clean_report_and_the_same_logits(source, tmp_path, caplog):
    folder = write_official_v2(source, tmp_path / "EVE-7B-HD-v2.0")
    config = json.loads((folder / "config.json").read_text())
    assert find_kind(folder) == "official" and is_official_v2_config(config)
    fresh = tiny_evev2(seed=9)  # other weights: every tensor must come from the folder
    report = load_official_v2_weights(fresh, folder)
    assert (report.missing, report.unexpected, report.renamed) == ([], [], {})
    assert report.dropped == {"rotary buffer": 1}
    with caplog.at_level("INFO"):
        loaded = load_model(folder, device="cpu")
    assert "missing 0, unexpected 0" in caplog.text and "mm_vision_tower" in caplog.text  # says where 800 came from
    assert (loaded.family, loaded.kind, loaded.image_size) == ("evev2", "official", 800)
    assert loaded.vlm.config.moe_parts == ["layernorm", "self_attn", "mlp"] and loaded.vlm.config.vision_hidden == 32
    assert torch.equal(logits(source, batch()), logits(loaded.vlm, batch()))
    engine = ChatEngine(loaded)
    assert engine.template.name == "qwen2"
    from PIL import Image

    answer = engine.chat(Image.new("RGB", (90, 60), (200, 30, 30)), [("user", "What colour?")], None)
    assert isinstance(answer, str) and engine.last_stats["new_tokens"] >= 1


def test_old_names_of_the_class_and_split_tokens_load_the_same(source, tmp_path):
    new = write_official_v2(source, tmp_path / "new")
    old = write_official_v2(source, tmp_path / "old", old_names=True)
    assert "model.vision_tower.start_embedding" in read_state_dict(old)
    report = load_official_v2_weights(tiny_evev2(seed=9), old)
    assert (report.missing, report.unexpected) == ([], [])
    assert report.renamed == {"start_embedding (earlier name)": 1, "end_embedding (earlier name)": 1}
    a, b = load_model(new, device="cpu").vlm.state_dict(), load_model(old, device="cpu").vlm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_token_under_both_names_is_refused():
    state = {"model.vision_tower.start_embedding": torch.zeros(2), "model.vision_tower.class_embedding": torch.ones(2)}
    with pytest.raises(KeyError, match="one token under two names"):
        split_official_v2_state_dict(state)


def test_preprocessing_facts_come_from_the_folder_and_say_where_from(source, tmp_path):
    pre = {"max_size": 1600, "patch_stride": 16, "dense_stride": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073]}
    with_file = write_official_v2(source, tmp_path / "a", preprocessor=pre)
    facts = preprocess_facts(with_file, {})
    assert (facts.max_size, facts.patch_size, facts.merge_size) == (1600, 16, 2)
    assert "preprocessor_config.json" in facts.source
    assert load_model(with_file, device="cpu").image_size == 1600
    bare = write_official_v2(source, tmp_path / "b", tower="some/local/tokenizer")
    facts = preprocess_facts(bare, json.loads((bare / "config.json").read_text()))
    assert facts.max_size == 1600 and "defaults" in facts.source
    bad = write_official_v2(source, tmp_path / "c", preprocessor={"image_mean": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="normalises images with image_mean"):
        load_model(bad, device="cpu")


def test_settings_keep_qwen2_keys_and_drop_eve_ones(source, tmp_path):
    folder = write_official_v2(source, tmp_path / "f")
    llm, eve, _ = official_v2_settings(folder, json.loads((folder / "config.json").read_text()))
    assert llm["model_type"] == "qwen2" and llm["rope_theta"] == 10000.0
    assert not {"mm_vision_tower", "add_moe", "moe_part", "tune_LLM", "architectures"} & set(llm)
    assert eve == {
        "image_size": 800,
        "patch_size": 16,
        "merge_size": 2,
        "vision_hidden": 32,
        "moe_parts": ["layernorm", "self_attn", "mlp"],
        "max_length": 2048,
    }


def test_a_config_that_does_not_fit_the_weights_is_a_clear_error(source, tmp_path):
    folder = write_official_v2(source, tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    config["add_moe"] = False  # the shards hold vision copies the model would not have
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected \d+.*add_moe / moe_part"):
        load_model(folder, device="cpu")


def test_export_of_an_imported_v2_folder_loads_again(source, tmp_path, capsys):
    folder = write_official_v2(source, tmp_path / "official")
    out = tmp_path / "export"
    assert export_main(["--dtype", "float32", str(folder), str(out)]) == 0
    assert "exported official" in capsys.readouterr().out
    config = read_export_config(out)
    assert config["family"] == "evev2" and config["eve"]["moe_parts"] == ["layernorm", "self_attn", "mlp"]
    again = load_model(out, device="cpu")
    assert (again.family, again.kind, again.image_size) == ("evev2", "export", 800)
    assert torch.equal(logits(source, batch()), logits(again.vlm, batch()))
