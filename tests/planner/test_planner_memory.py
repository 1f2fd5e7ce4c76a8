"""The memory model: against the peaks measured on the H100, and the model states of each sharding strategy."""

from __future__ import annotations

import json

import pytest

from eve_lightning.planner.calibration import bench_step_memory
from eve_lightning.planner.memory import GIB, model_states
from tests.helpers.repo_paths import REPO

RESULTS = REPO / "benchmarks" / "results"
MEASURED = {  # benchmark JSON -> role of the measurement for the memory model
    "2026-11-25_h100_eve_1b_pretrain_flex.json": "calibration (trained decoder)",
    "2026-11-25_h100_eve_7b_prealign_mb8_flex.json": "calibration (frozen decoder)",
    "2026-11-25_h100_eve_1b_sft_flex.json": "check",
    "2026-11-25_h100_eve_7b_prealign_mb14_flex_ours.json": "check",
    # compiled blocks, balanced rows
    "2026-11-25_h100_eve_1b_pretrain_mb32_varlen_compile_balanced.json": "calibration (trained decoder, compiled)",
    "2026-11-25_h100_eve_7b_prealign_mb12_varlen_compile_ours.json": "calibration (frozen decoder, compiled)",
    "2026-11-25_h100_eve_1b_sft_mb16_varlen_repeatkv_compile_balanced.json": "check",
    "2026-11-25_h100_eve_1b_pretrain_mb32_flex_compile_teacher_balanced_ours.json": "check",
}


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_memory_model_matches_the_peak_measured_on_the_h100(name):
    result = json.loads((RESULTS / name).read_text())
    predicted = bench_step_memory(result).total / GIB
    measured = result["paths"]["ours"]["peak_mem_gib"]
    tolerance = 0.02 if MEASURED[name].startswith("calibration") else 0.15
    assert predicted == pytest.approx(measured, rel=tolerance), f"{name}: {predicted:.2f} vs {measured:.2f} GiB"


def test_model_states_by_strategy():
    n = 16
    kw = dict(weight_bytes=2, frozen_weight_bytes=2, n_gpus=n, gathered=0.0)
    ddp = model_states(1_000_000, 500, strategy="ddp", **kw)
    assert ddp["weights (trained)"] == 2e6 and ddp["gradients"] == 2e6 and ddp["weights (frozen)"] == 1000
    assert ddp["optimizer states"] == 12e6  # fp32 master + two Adam moments for bf16 weights
    z2 = model_states(1_000_000, 500, strategy="deepspeed_zero2", **kw)
    assert z2["weights (trained)"] == 2e6 and z2["gradients"] == 2e6 / n and z2["optimizer states"] == 12e6 / n
    z3 = model_states(1_000_000, 500, strategy="deepspeed_zero3", **kw)
    assert z3["weights (trained)"] == 2e6 / n and z3["weights (frozen)"] == 1000 / n
    fp32 = model_states(1_000_000, 0, strategy="ddp", weight_bytes=4, frozen_weight_bytes=2, n_gpus=1)
    assert fp32["optimizer states"] == 8e6 and fp32["gradients"] == 4e6
    with pytest.raises(ValueError, match="unknown strategy"):
        model_states(1, 0, strategy="zero4", **kw)
