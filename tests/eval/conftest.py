"""Fixtures of the evaluation tests: a tiny random EVE export (demo data: ``demo_root``, tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def eval_export(tiny_export) -> Path:
    """The shared tiny random export (tests/conftest.py)."""
    return tiny_export
