"""EVEv2 weights load for inference from exports, and the copy step as a command (`export --copy-experts`).

The family is read from the weights' own config; exports written before it was recorded load as EVE v1.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.export import main as export_main
from eve_lightning.inference.loading import load_model
from eve_lightning.models.evev2 import EveV2VLM, is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.export_format import load_export_weights, read_export_config, save_export
from tests.helpers.official_checkpoint_v2 import tiny_evev2


def batch() -> dict[str, torch.Tensor]:
    """Two rows: an image of 2 x 3 cells (top-left of a 96 px canvas) and a text-only row."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 7, 8, 9, 10], [5, 6, 7, 8, 0, 0]])
    labels = torch.where(ids > 0, ids, IGNORE_INDEX)
    pixels = torch.randint(0, 256, (2, 3, 96, 96), generator=gen, dtype=torch.uint8)
    mask = torch.zeros(2, 96, 96, dtype=torch.uint8)
    mask[0, :64, :96] = 1
    attention = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "pixel_values": pixels, "pixel_mask": mask}


def loss(vlm, b) -> torch.Tensor:
    with torch.no_grad():
        return vlm(**b).loss


def test_an_evev2_export_records_its_family_and_loads_back_identical(tmp_path):
    vlm = tiny_evev2()
    folder = save_export(tmp_path / "export", vlm, tokenizer_files=[default_tokenizer_path()], stage="evev2_sft")
    config = read_export_config(folder)
    assert config["family"] == "evev2" and config["llm"]["model_type"] == "qwen2"
    loaded = load_model(folder, device="cpu")
    assert (loaded.family, loaded.kind, loaded.image_size) == ("evev2", "export", 800)
    assert isinstance(loaded.vlm, EveV2VLM) and loaded.vlm.config.moe_parts == ["layernorm", "self_attn", "mlp"]
    state = loaded.vlm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in vlm.state_dict().items())
    assert torch.equal(loss(vlm, batch()), loss(loaded.vlm, batch()))


def test_an_export_without_a_family_is_eve_v1(tiny_export, tmp_path):
    old = shutil.copytree(tiny_export, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config.pop("family", None)  # as written before the family was recorded
    (old / "config.json").write_text(json.dumps(config))
    loaded = load_model(old, device="cpu")
    assert loaded.family == "eve" and type(loaded.vlm).__name__ == "EveVLM" and loaded.image_size == 672


def test_export_copy_experts_turns_a_stage_0_export_into_a_stage_1_start(tmp_path, capsys):
    s0 = tiny_evev2(seed=3, moe_parts=[])
    source = save_export(tmp_path / "s0", s0, tokenizer_files=[default_tokenizer_path()], stage="evev2_s0")
    with pytest.raises(ValueError, match="no EVEv2 vision experts"):  # a model with experts does not take it as is
        load_export_weights(source, tiny_evev2())
    out = tmp_path / "copied"
    assert export_main(["--copy-experts", "--dtype", "float32", str(source), str(out)]) == 0
    assert "with vision experts copied from the text weights" in capsys.readouterr().out
    config = read_export_config(out)
    assert config["family"] == "evev2" and config["eve"]["moe_parts"] == ["layernorm", "self_attn", "mlp"]
    loaded = load_model(out, device="cpu")
    pairs = list(vision_text_pairs(loaded.vlm))
    assert len(pairs) == 48 and all(torch.equal(v, t) for _, v, t in pairs)
    state = loaded.vlm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in s0.state_dict().items())  # the stage-0 weights unchanged
    assert sum(is_vision_parameter(k) for k in state) == 48
    with torch.no_grad():  # with experts equal to the text weights the function is the stage-0 model's
        assert torch.allclose(loss(s0, batch()), loss(loaded.vlm, batch()), atol=1e-6)


def test_export_copy_experts_refuses_eve_v1_weights(tiny_export, tmp_path, capsys):
    assert export_main(["--copy-experts", str(tiny_export), str(tmp_path / "out")]) == 2
    assert "copy_experts (the copy step into vision experts) is for EVEv2 models" in capsys.readouterr().err
