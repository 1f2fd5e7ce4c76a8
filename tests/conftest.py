"""Shared fixtures: the tiny model config, the real tokenizer file, real photos, and GPU skipping."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from repo_paths import CONF


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_model_cfg() -> dict:
    """conf/model/tiny.yaml as a plain dict (the same file training runs use)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
