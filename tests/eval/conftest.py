"""Fixtures of the evaluation tests: a tiny random EVE export and a small demo data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from eve_lightning.data.demo import generate


@pytest.fixture(scope="session")
def eval_export(tiny_export) -> Path:
    """The shared tiny random export (tests/conftest.py)."""
    return tiny_export


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Held-out demo data only: 4 conversation records and 4 caption images."""
    root = tmp_path_factory.mktemp("eval-demo") / "demo"
    generate(root, num_pretrain=0, num_sft=0, num_val=4, seed=0, max_side=672, workers=1)
    return root
