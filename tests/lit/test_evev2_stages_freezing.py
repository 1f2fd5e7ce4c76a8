"""EVEv2 stages in the Lightning module: what trains in each stage, and the copy step at initialisation."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.lit.eve_module import EveLitModule
from eve_lightning.lit.freezing import apply_freezing, format_freezing_table, freezing_table
from eve_lightning.models.evev2 import is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.export_format import read_export_config, save_export
from tests.helpers.repo_paths import CONF

OPTIM = {"lr": 1e-3, "warmup_ratio": 0.0}


def evev2_cfg(**eve) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "evev2_tiny.yaml"), resolve=True)
    cfg["eve"].update(eve)
    return cfg


def build(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return instantiate(copy.deepcopy(cfg), _convert_="all")


def stage(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "stage" / f"{name}.yaml"), resolve=True)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage_0_trains_the_patch_embedding_of_a_decoder_without_experts():
    model = build(evev2_cfg(moe_parts=[]))
    assert not any(is_vision_parameter(n) for n, _ in model.named_parameters())
    apply_freezing(model, stage("evev2_s0")["trainable"])
    assert trainable(model) == {n for n, _ in model.named_parameters() if n.startswith("vlm.patch_embed.")}


@pytest.mark.parametrize(("name", "llm_text"), [("evev2_s1_0", False), ("evev2_s1_1", False), ("evev2_s2", True)])
def test_stage_1_trains_patch_embedding_and_vision_experts_and_stage_2_everything(name, llm_text):
    model = build(evev2_cfg())
    apply_freezing(model, stage(name)["trainable"])
    names = [n for n, _ in model.named_parameters()]
    experts = {n for n in names if is_vision_parameter(n)}
    assert len(experts) == 4 * 12  # 4 layers x (q, k, v, o weights + biases of q/k/v, 3 MLP, 2 norms)
    patch = {n for n in names if n.startswith("vlm.patch_embed.")}
    want = set(names) if llm_text else patch | experts
    assert trainable(model) == want
    rows = {part: (train, total) for part, train, total in freezing_table(model)}
    expert_params = sum(p.numel() for n, p in model.named_parameters() if n in experts)
    assert rows[" of which experts"] == (expert_params, expert_params)
    assert rows["vlm.llm"][0] == (rows["vlm.llm"][1] if llm_text else expert_params)
    table = format_freezing_table(freezing_table(model))
    assert "of which experts" in table and ("partial" in table) != llm_text
    total = sum(p.numel() for p in model.parameters())
    assert table.splitlines()[-1].split()[-1] == f"{total:,}"  # the experts row is not counted twice


def test_the_expert_glob_matches_nothing_in_an_eve_v1_model(tiny_model_cfg):
    model = build(tiny_model_cfg)
    with pytest.raises(ValueError, match=r"stage.trainable entry 'vlm.llm.\*.moe_\*' matches no parameter"):
        apply_freezing(model, stage("evev2_s1_0")["trainable"])


def stage0_export(tmp_path):
    """A stage-0 export: no vision experts, trained-looking (non-default) text weights."""
    model = build(evev2_cfg(moe_parts=[]), seed=1)
    return save_export(tmp_path / "s0", model.vlm, stage="evev2_s0"), model


def module(cfg: dict, stage_name: str, init_from=None, **stage_over) -> EveLitModule:
    spec = {**stage(stage_name), **stage_over}
    factory = functools.partial(instantiate, copy.deepcopy(cfg), _convert_="all")
    return EveLitModule(factory, spec, OPTIM, total_steps=2, init_from=str(init_from) if init_from else None)


def test_stage_1_0_copies_the_text_weights_into_the_experts_after_loading_the_stage_0_export(tmp_path, caplog):
    folder, s0 = stage0_export(tmp_path)
    assert read_export_config(folder)["family"] == "evev2" and read_export_config(folder)["eve"]["moe_parts"] == []
    lit = module(evev2_cfg(), "evev2_s1_0", folder)
    with caplog.at_level("INFO"):
        lit.configure_model()
    assert "copy step: 48 vision-expert tensors set to their text weights" in caplog.text
    state = lit.model.vlm.state_dict()
    for key, value in s0.vlm.state_dict().items():  # every stage-0 weight arrived
        assert torch.equal(state[key], value), key
    pairs = list(vision_text_pairs(lit.model))
    assert len(pairs) == 48 and all(torch.equal(v, t) for _, v, t in pairs)  # experts == text weights
    assert trainable(lit.model) == {
        n for n, _ in lit.model.named_parameters() if n.startswith("vlm.patch_embed.") or is_vision_parameter(n)
    }
    snapshot = {k: v.clone() for k, v in lit.model.state_dict().items()}
    lit._init_weights()  # applying the step again changes nothing
    assert all(torch.equal(v, snapshot[k]) for k, v in lit.model.state_dict().items())


def test_without_the_copy_step_a_stage_0_export_does_not_fit_a_model_with_experts(tmp_path):
    folder, _ = stage0_export(tmp_path)
    lit = module(evev2_cfg(), "evev2_s1_1", folder)
    with pytest.raises(ValueError, match=r"no EVEv2 vision experts \(a stage-0 export\): start from it with stage"):
        lit.configure_model()


def test_the_copy_step_refuses_a_model_without_experts(tiny_model_cfg):
    lit = module(tiny_model_cfg, "pretrain", init_copy_experts=True)
    with pytest.raises(ValueError, match="init_copy_experts=true but the model has no vision experts"):
        lit.configure_model()
