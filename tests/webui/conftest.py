"""Fixtures of the web demo tests: the real engine on the tiny random export, and a fake engine."""

from __future__ import annotations

import pytest

from eve_lightning.inference.engine import ChatEngine
from tests.helpers.webui import FakeEngine


@pytest.fixture(scope="session")
def engine(tiny_export) -> ChatEngine:
    return ChatEngine.from_dir(tiny_export, device="cpu")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()
