"""The shipped model configs build, and EVE-7B's parts have the published sizes (spec sections 0 and 8.1)."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.models.shapes import CLIP_L14_336, DECODERS, VICUNA_7B
from tests.helpers.repo_paths import CONF


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_eve_7b_config_builds_parts_of_the_published_sizes():
    cfg = OmegaConf.load(CONF / "model" / "eve_7b.yaml")
    cfg.llm.path, cfg.llm.config = None, VICUNA_7B
    cfg.teacher.path, cfg.teacher.config = None, CLIP_L14_336
    with torch.device("meta"):
        model = instantiate(cfg, _convert_="all")
    vlm = model.vlm
    assert vlm.aligner.layer_indices == [32, 28, 24, 20, 16, 12, 8, 4, 0]
    pel_and_projector = count(vlm.patch_embed) + count(vlm.projector)
    assert 29.5e6 < pel_and_projector < 30.5e6  # "~30M params incl. projector"
    assert 42.5e6 < count(vlm.aligner) < 43.5e6  # "~43M"
    assert 6.73e9 < count(vlm.llm) < 6.75e9  # LLaMA-7B
    assert len(model.teacher.layers) == 23  # the distilled penultimate layer is the last one kept
    assert 0.30e9 < count(model.teacher) + count(model.teacher.layers[-1]) < 0.31e9  # CLIP-L/14-336 tower
    assert vlm.patch_embed.local_attn.scale == 1024**-0.5


def test_align_weight_zero_builds_no_teacher_and_no_aligner(tiny_model_cfg):
    tiny_model_cfg["eve"]["align_weight"] = 0.0
    tiny_model_cfg["teacher"]["path"] = "/nonexistent"  # never touched
    model = instantiate(tiny_model_cfg, _convert_="all")
    assert model.teacher is None and model.vlm.aligner is None


def test_eve_1b_config_is_the_benchmark_model():
    cfg = OmegaConf.load(CONF / "model" / "eve_1b.yaml")
    assert {k: cfg.llm.config[k] for k in DECODERS["eve_1b"]} == DECODERS["eve_1b"]
    assert {k: cfg.teacher.config[k] for k in CLIP_L14_336} == CLIP_L14_336
    with torch.device("meta"):
        model = instantiate(cfg, _convert_="all")
    assert 1.09e9 < count(model.vlm.llm) < 1.11e9  # TinyLlama-1.1B
    assert model.vlm.aligner.layer_indices == [22, 18, 14, 10, 6, 2]
    assert len(model.teacher.layers) == 23 and next(model.teacher.parameters()).dtype == torch.bfloat16
