"""Fixtures of the evaluation tests: a tiny random EVE export and a small demo data set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.data.demo import generate
from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.models.export_format import save_export
from repo_paths import CONF


@pytest.fixture(scope="session")
def eval_export(tmp_path_factory) -> Path:
    """conf/model/tiny.yaml with random weights and no aligner, saved as a stage export."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["align_weight"] = 0.0
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    folder = tmp_path_factory.mktemp("eval-model") / "tiny-eve"
    return save_export(folder, model.vlm, tokenizer_files=[default_tokenizer_path()])


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Held-out demo data only: 4 conversation records and 4 caption images."""
    root = tmp_path_factory.mktemp("eval-demo") / "demo"
    generate(root, num_pretrain=0, num_sft=0, num_val=4, seed=0, max_side=672, workers=1)
    return root
