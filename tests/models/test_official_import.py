"""Official EVE v1 checkpoint layout -> our modules: every key placed, same function as native weights."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from eve_lightning.models.official_import import load_official_weights
from tests.helpers.official_checkpoint import official_layout, save_sharded_bin
from tests.helpers.views import make_batch


def build(cfg, seed, **eve):
    cfg = copy.deepcopy(cfg)
    cfg["eve"].update(eve)
    torch.manual_seed(seed)
    return instantiate(cfg, _convert_="all").float().eval()


@pytest.mark.parametrize("fmt", ["sharded_bin", "safetensors"])
def test_official_layout_loads_completely_and_reproduces_outputs(tiny_model_cfg, tmp_path, fmt):
    native = build(tiny_model_cfg, seed=0)
    state = official_layout(native)
    if fmt == "sharded_bin":
        save_sharded_bin(state, tmp_path)
    else:
        save_file(state, str(tmp_path / "model.safetensors"))

    imported = build(tiny_model_cfg, seed=1)
    batch = make_batch(672)
    with torch.no_grad():
        before = imported(batch).loss
    report = load_official_weights(imported.vlm, tmp_path, teacher=imported.teacher)
    assert report.missing == [] and report.unexpected == []
    n_top = len([k for k in model_keys_dup(native) if f".layers.{native.teacher.kept_layers - 1}." in k])
    assert n_top > 0
    assert report.dropped == {
        "duplicate or buffer": len(model_keys_dup(native)) + n_top + 1,
        "teacher layers above the distilled one": n_top,
    }
    with torch.no_grad():
        a, b = native(batch), imported(batch)
    assert not torch.equal(before, a.loss)  # the two seeds really differ
    assert torch.equal(a.loss_ce, b.loss_ce) and torch.equal(a.loss_align, b.loss_align)


def model_keys_dup(model):
    return list(model.teacher.clip.state_dict())


def test_inference_model_drops_teacher_and_aligner_and_reports_them(tiny_model_cfg, tmp_path):
    save_file(official_layout(build(tiny_model_cfg, seed=0)), str(tmp_path / "model.safetensors"))
    vlm = build(tiny_model_cfg, seed=1, align_weight=0.0).vlm
    assert vlm.aligner is None
    report = load_official_weights(vlm, tmp_path)
    assert report.missing == [] and report.unexpected == []
    # 3 layers x (norm weight, norm bias, proj weight) + 2 linears x (weight, bias)
    assert report.dropped["aligner (not built)"] == 3 * 3 + 2 * 2
    assert report.dropped["teacher (not built)"] > 0


def test_mismatched_model_fails_with_a_clear_message(tiny_model_cfg, tmp_path):
    save_file(official_layout(build(tiny_model_cfg, seed=0)), str(tmp_path / "model.safetensors"))
    wrong = build(tiny_model_cfg, seed=0)
    wrong.vlm.projector.fc3 = torch.nn.Linear(2, 2)  # a parameter the checkpoint does not have
    with pytest.raises(ValueError, match=r"missing \['projector.fc3.weight'"):
        load_official_weights(wrong.vlm, tmp_path, teacher=wrong.teacher)
    with pytest.raises(FileNotFoundError, match="no weights in"):
        load_official_weights(wrong.vlm, tmp_path / "nowhere")
