"""Shared fixtures of the planner tests: the EVE-7B recipe planned once, and one stage planned from overrides."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest

from eve_lightning.planner import cli
from eve_lightning.planner.recipe import compose_stage
from eve_lightning.planner.stage import StagePlan, plan_stage


@pytest.fixture(scope="session")
def eve7b() -> tuple[list[StagePlan], str]:
    """``python -m eve_lightning.plan recipe=eve7b cluster=a100_2x8``: the plans and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        plans = cli.main(["recipe=eve7b", "cluster=a100_2x8"])
    return plans, out.getvalue()


@pytest.fixture
def stage() -> Callable[..., StagePlan]:
    """``stage(experiment, *overrides, options=None)``: the plan of one experiment composed with the overrides."""

    def plan(experiment: str, *overrides: str, options: dict | None = None) -> StagePlan:
        return plan_stage(compose_stage([f"experiment={experiment}", *overrides]), experiment, options or {})

    return plan
