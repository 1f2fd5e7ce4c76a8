"""Fixtures of the web demo tests: a tiny random EVE export and its real engine, and a fake engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demo_helpers import FakeEngine
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.inference.engine import ChatEngine
from eve_lightning.models.export_format import save_export
from repo_paths import CONF


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """conf/model/tiny.yaml with random weights and no aligner, saved as a stage export named `tiny-eve`."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["align_weight"] = 0.0
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    folder = tmp_path_factory.mktemp("demo") / "tiny-eve"
    return save_export(folder, model.vlm, tokenizer_files=[default_tokenizer_path()])


@pytest.fixture(scope="session")
def engine(tiny_export) -> ChatEngine:
    return ChatEngine.from_dir(tiny_export, device="cpu")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()
