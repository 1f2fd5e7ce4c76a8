"""Fixtures of the web demo tests: the real engine on the tiny random export, and a fake engine."""

from __future__ import annotations

import pytest
from demo_helpers import FakeEngine

from eve_lightning.inference.engine import ChatEngine


@pytest.fixture(scope="session")
def engine(tiny_export) -> ChatEngine:
    return ChatEngine.from_dir(tiny_export, device="cpu")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()
