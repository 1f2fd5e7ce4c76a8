"""The LightningModule is a config node (`conf/module/eve.yaml`): it instantiates to an EveLitModule wired from the
roots users override, with the model as a factory; train.py stays a thin entry point."""

from __future__ import annotations

import ast

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.lit.eve_module import EveLitModule
from eve_lightning.models.build import EveWithTeacher
from eve_lightning.utils.config_checks import validate
from tests.helpers.repo_paths import REPO
from tests.helpers.runs import compose_train

TRAIN_PY = REPO / "src" / "eve_lightning" / "train.py"


def module_from(tmp_path, overrides: list[str]) -> tuple[EveLitModule, object]:
    cfg = compose_train(["+stage=prealign", *overrides], tmp_path, tmp_path / "data")
    validate(cfg)
    OmegaConf.resolve(cfg)
    return instantiate(cfg.module, _convert_="all"), cfg


def test_train_py_is_a_thin_entry_that_builds_nothing_by_hand():
    source = TRAIN_PY.read_text()
    assert len(source.splitlines()) <= 150
    calls = {
        node.func.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and hasattr(node.func, "id")
    }
    assert "EveLitModule" not in calls and "instantiate" in calls  # the module comes from its config node


def test_the_module_node_instantiates_an_eve_lit_module_with_a_model_factory(tmp_path):
    module, cfg = module_from(tmp_path, [])
    assert isinstance(module, EveLitModule) and module.model is None  # built later, in configure_model
    hp = module.hparams
    assert hp.stage == OmegaConf.to_container(cfg.stage) and hp.optim == OmegaConf.to_container(cfg.optim)
    assert (
        hp.total_steps == cfg.trainer.max_steps and hp.max_consecutive_nonfinite == cfg.guards.max_consecutive_nonfinite
    )
    assert hp.compile == OmegaConf.to_container(cfg.compile) and hp.init_from is None
    assert "model_factory" not in hp  # a callable is never saved as a hyperparameter
    model = module.model_factory()
    assert isinstance(model, EveWithTeacher)
    assert model.vlm.config.max_length == cfg.model.eve.max_length and model.teacher is not None
    assert OmegaConf.select(cfg, "module.model_factory._partial_") is True
    assert OmegaConf.masked_copy(cfg.module.model_factory, ["llm", "eve"]) == OmegaConf.masked_copy(
        cfg.model, ["llm", "eve"]
    )


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("optim.lr=1.0e-4", "optim", None),
        ("gradient_checkpointing=true", "gradient_checkpointing", True),
        ("gradient_checkpointing_layers=1", "gradient_checkpointing_layers", 1),
        ("loss_normalization=per_rank", "loss_normalization", "per_rank"),
        ("guards.max_consecutive_nonfinite=7", "max_consecutive_nonfinite", 7),
        ("trainer.max_steps=11", "total_steps", 11),
    ],
)
def test_the_module_follows_the_overrides_users_type(tmp_path, override, key, value):
    extra = ["gradient_checkpointing=true"] if key == "gradient_checkpointing_layers" else []
    module, _ = module_from(tmp_path, [override, *extra])
    if key == "optim":
        assert module.hparams.optim["lr"] == 1.0e-4
    else:
        assert module.hparams[key] == value


def test_a_model_override_reaches_the_factory(tmp_path):
    module, _ = module_from(tmp_path, ["model.llm.config.num_hidden_layers=2", "model.eve.align_layer_interval=1"])
    assert module.model_factory().vlm.llm.config.num_hidden_layers == 2
