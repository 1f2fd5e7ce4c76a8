"""Fixture for training runs: a small demo data set, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    """paths.data_dir holding a small demo set (48 samples per task, 16 held out)."""
    from eve_lightning.data import demo

    root = tmp_path_factory.mktemp("data")
    demo.generate(root / "demo", num_pretrain=48, num_sft=48, num_val=16, seed=0, max_side=672, workers=1)
    return root
