"""EVEv2 trained with the framework's own commands: stage 0 -> 1.0 (with the copy step) -> SFT on the tiny model and
the demo data, chained through stage exports, as `python -m eve_lightning.train +stage=evev2_s0 model=evev2_tiny`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.inference.loading import load_model
from eve_lightning.models.evev2 import is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.export_format import read_export_config, read_safetensors
from eve_lightning.train import train
from eve_lightning.utils.config_checks import ConfigError, validate
from tests.helpers.runs import compose_train

SETTINGS = ["model=evev2_tiny", "seed=7"]


def run_stage(tmp_path: Path, data_dir: Path, name: str, parent: Path | None = None) -> Path:
    """Train one stage (3 steps, about 2 s on 2 cores) and return its export folder."""
    init = [f"init_from={parent}"] if parent else []
    cfg = compose_train([f"+stage={name}", *SETTINGS, *init], tmp_path / name, data_dir)
    train(cfg)
    return tmp_path / name / "run" / "export"


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_stage_0_then_1_0_with_the_copy_step_then_sft(tmp_path, demo_data_dir):
    s0 = run_stage(tmp_path, demo_data_dir, "evev2_s0")
    config = read_export_config(s0)
    assert (config["family"], config["stage"], config["eve"]["moe_parts"]) == ("evev2", "evev2_s0", [])
    assert (config["eve"]["image_size"], config["eve"]["max_length"]) == (800, 2048)
    w0 = read_safetensors(s0, "model")
    assert not any(is_vision_parameter(k) for k in w0)

    # stage 1.0 as its config builds it: the stage-0 weights, then the experts set to the text weights
    cfg = compose_train(["+stage=evev2_s1_0", *SETTINGS, f"init_from={s0}"], tmp_path / "probe", demo_data_dir)
    validate(cfg)
    OmegaConf.resolve(cfg)
    assert cfg.stage.init_copy_experts and cfg.data.family == "evev2" and cfg.data.template == "qwen2_plain"
    module = instantiate(cfg.module, _convert_="all")
    module.configure_model()
    pairs = list(vision_text_pairs(module.model))
    assert len(pairs) == 48 and all(torch.equal(vision, text) for _, vision, text in pairs)
    state = module.model.vlm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in w0.items())

    s1 = run_stage(tmp_path, demo_data_dir, "evev2_s1_0", s0)
    w1 = read_safetensors(s1, "model")
    text = [k for k in w0 if not k.startswith("patch_embed.")]
    assert all(torch.equal(w1[k], w0[k]) for k in text)  # the text weights stayed frozen
    assert not all(torch.equal(w1[k], w0[k]) for k in w0 if k.startswith("patch_embed."))
    experts = [k for k in w1 if is_vision_parameter(k)]
    assert len(experts) == 48
    moved = [k for k in experts if not torch.equal(w1[k], w1[k.replace("moe_", "")])]
    assert moved  # the experts trained away from their text copies

    sft = run_stage(tmp_path, demo_data_dir, "evev2_sft", s1)
    config = read_export_config(sft)
    assert (config["stage"], config["eve"]["image_size"], config["eve"]["max_length"]) == ("evev2_sft", 1600, 5000)
    loaded = load_model(sft, device="cpu")
    assert loaded.family == "evev2" and loaded.image_size == 1600
    run = load_model(tmp_path / "evev2_sft" / "run", device="cpu")  # the run folder's last checkpoint
    assert run.kind == "lightning_checkpoint" and run.family == "evev2"
    for stage in ("evev2_s0", "evev2_s1_0", "evev2_sft"):
        values = losses(tmp_path / stage / "run")
        assert len(values) == 3 and all(math.isfinite(v) for v in values), stage


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+stage=evev2_s0"], "stage evev2_s0 trains an evev2 model but the model config builds an eve model"),
        (["+stage=sft", "model=evev2_tiny"], "stage sft trains an eve model but the model config builds an evev2"),
        (["+stage=evev2_s2", "model=evev2_tiny", "resolution=r672"], "add resolution=evev2_r1600"),
    ],
)
def test_stage_and_model_families_must_agree(tmp_path, overrides, message):
    cfg = compose_train(overrides, tmp_path, tmp_path / "data")
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
