"""Per-stage freezing, parameter groups and the LR schedule."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.lit.freezing import apply_freezing, format_freezing_table, freezing_table
from eve_lightning.lit.optim import build_optimizer, param_groups, warmup_cosine
from tests.helpers.repo_paths import CONF


@pytest.fixture(scope="module")
def model():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    torch.manual_seed(0)
    return instantiate(copy.deepcopy(cfg), _convert_="all")


def stage_trainable(name):
    return list(OmegaConf.load(CONF / "stage" / f"{name}.yaml").trainable)


def test_prealign_trains_only_the_vision_parts(model):
    apply_freezing(model, stage_trainable("prealign"))
    rows = {part: (train, total) for part, train, total in freezing_table(model)}
    assert rows["vlm.llm"][0] == 0
    for part in ("vlm.patch_embed", "vlm.projector", "vlm.aligner"):
        assert rows[part][0] == rows[part][1] > 0
    assert rows["teacher"][0] == 0
    table = format_freezing_table(freezing_table(model))
    assert "vlm.llm" in table and "frozen" in table and "trained" in table


@pytest.mark.parametrize("stage", ["pretrain", "sft", "sft_hd"])
def test_later_stages_train_everything_but_the_teacher(model, stage):
    apply_freezing(model, stage_trainable(stage))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("vlm.")}


def test_prealign_without_aligner_trains_the_patch_embedding_and_projector():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["align_weight"] = 0.0
    model = instantiate(cfg, _convert_="all")
    apply_freezing(model, stage_trainable("prealign"))
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"patch_embed", "projector"}
    with pytest.raises(ValueError, match="nothing would train"):
        apply_freezing(model, ["vlm.aligner"])


def test_freezing_refuses_typos_and_the_teacher(model):
    with pytest.raises(ValueError, match="matches no parameter"):
        apply_freezing(model, ["vlm.patch_embedding"])
    with pytest.raises(ValueError, match="never trained"):
        apply_freezing(model, ["teacher"])


def test_param_groups_have_their_own_lr_and_no_decay_on_norms_biases_tokens(model):
    apply_freezing(model, stage_trainable("prealign"))
    groups = {g["name"]: g for g in param_groups(model, 4e-5, {"patch_embed": 4e-4, "aligner": 1e-4}, 0.1)}
    assert set(groups) == {
        "patch_embed", "patch_embed/no_decay", "projector", "projector/no_decay", "aligner", "aligner/no_decay"
    }  # fmt: skip
    assert groups["patch_embed"]["lr"] == 4e-4 and groups["aligner"]["lr"] == 1e-4
    assert groups["projector"]["lr"] == 4e-5  # no group LR given -> base
    pe = model.vlm.patch_embed
    no_decay_ids = {id(p) for p in groups["patch_embed/no_decay"]["params"]}
    assert id(pe.cls_token) in no_decay_ids and id(pe.local_attn.q_norm.weight) in no_decay_ids
    assert id(pe.local_attn.out_proj.bias) in no_decay_ids and id(pe.conv.weight) not in no_decay_ids
    assert groups["patch_embed"]["weight_decay"] == 0.1 and groups["patch_embed/no_decay"]["weight_decay"] == 0
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_trainable


def test_warmup_then_cosine_by_optimizer_step():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_build_optimizer_schedule_scales_every_group(model):
    apply_freezing(model, stage_trainable("prealign"))
    opt, sched = build_optimizer(model, total_steps=20, lr=1e-3, group_lr={"patch_embed": 1e-2}, warmup_ratio=0.1)
    peak = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert peak["patch_embed"] == 1e-2 and peak["projector"] == 1e-3
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
    assert lrs[0]["patch_embed"] == pytest.approx(1e-2)  # after 2 warmup steps: peak
    assert lrs[-1]["projector"] == pytest.approx(0.0, abs=1e-12)
    assert all(a["patch_embed"] >= b["patch_embed"] for a, b in itertools.pairwise(lrs))
