"""The planner: memory model against the H100 measurements, model states by strategy, the recipe projection."""

from __future__ import annotations

import json

import pytest

from eve_lightning import plan
from eve_lightning.utils.memory_model import GIB, model_states
from repo_paths import REPO

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
    predicted = plan.bench_step_memory(result).total / GIB
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


def test_recipe_plan_on_two_a100_nodes(capsys):
    plans = plan.main(["recipe=eve7b", "cluster=a100_2x8"])
    out = capsys.readouterr().out
    assert [p.name for p in plans] == ["prealign", "pretrain", "sft"]
    assert [p.samples for p in plans] == [16_000_000, 64_453 * 512, 5_197 * 128]
    pre, pt, _ = plans
    assert pre.memory.parts["optimizer states"] < 0.02 * pt.memory.parts["optimizer states"]  # decoder frozen
    assert all(p.memory.total < 76 * GIB for p in plans)  # an 80 GB A100 less CUDA context and NCCL buffers
    for word in ("recipe total", "days", "assumptions:", "scaling efficiency", "published Vicuna-7B shape"):
        assert word in out
    total_days = sum(p.seconds for p in plans) / 86400
    assert 1 < total_days < 60


def test_strategy_checkpointing_and_options_move_the_plan():
    base = ["cluster=a100_2x8", "data.batch_size=8"]
    zero3 = plan.plan_stage(plan.compose_stage(["experiment=eve7b_pretrain_r672", *base]), "x", {})
    zero2 = plan.plan_stage(
        plan.compose_stage(["experiment=eve7b_pretrain_r672", "strategy=deepspeed_zero2", *base]), "x", {}
    )
    assert zero2.memory.parts["weights (trained)"] == pytest.approx(16 * zero3.memory.parts["weights (trained)"])
    no_ckpt = plan.plan_stage(
        plan.compose_stage(["experiment=eve7b_pretrain_r672", "gradient_checkpointing=false", *base]), "x", {}
    )
    assert no_ckpt.memory.parts["activations (decoder)"] > 5 * zero3.memory.parts["activations (decoder)"]
    faster = plan.plan_stage(
        plan.compose_stage(["experiment=eve7b_pretrain_r672", *base]), "x", {"mfu": {"pretrain": 0.27}}
    )
    assert faster.seconds == pytest.approx(zero3.seconds * plan.MEASURED_MFU["eager"]["pretrain"] / 0.27)
    assert zero3.seconds == pytest.approx(no_ckpt.seconds * 4 / 3)  # the forward runs again in the backward
    frozen = [
        plan.plan_stage(plan.compose_stage(["experiment=eve7b_prealign_r672", *base, *extra]), "x", {})
        for extra in ([], ["gradient_checkpointing=false"])
    ]
    assert frozen[0].seconds == pytest.approx(frozen[1].seconds * 3 / 2)
    half = plan.plan_stage(
        plan.compose_stage(["experiment=eve7b_pretrain_r672", "gradient_checkpointing_layers=16", *base]), "x", {}
    )
    assert half.seconds == pytest.approx(no_ckpt.seconds * (1 + 0.5 / 3))  # half the layers recompute
    act = lambda p: p.memory.parts["activations (decoder)"]  # noqa: E731
    assert act(zero3) < act(half) < act(no_ckpt)
    assert act(half) == pytest.approx(act(zero3) / 2 + act(no_ckpt) / 2 - act(no_ckpt) / 32 / 2)


def test_plan_names_what_is_missing():
    with pytest.raises(SystemExit, match="recipe=eve7b"):
        plan.main(["cluster=a100_2x8"])
    with pytest.raises(SystemExit, match="unknown recipe"):
        plan.main(["recipe=eve13b"])


def test_compiled_blocks_use_their_own_mfu_and_what_training_refuses_is_not_planned():
    base = ["experiment=eve7b_pretrain_r672", "cluster=a100_2x8", "strategy=fsdp"]
    eager = plan.plan_stage(plan.compose_stage(base), "x", {})
    compiled = plan.plan_stage(plan.compose_stage([*base, "compile.enabled=true"]), "x", {})
    assert (eager.mfu, compiled.mfu) == (
        plan.MEASURED_MFU["eager"]["pretrain"],
        plan.MEASURED_MFU["compiled"]["pretrain"],
    )
    assert compiled.seconds == pytest.approx(eager.seconds * eager.mfu / compiled.mfu)
    varlen = plan.plan_stage(
        plan.compose_stage([*base, "compile.enabled=true", "model.llm.attn_implementation=torch_varlen"]), "x", {}
    )
    assert varlen.mfu == plan.MEASURED_MFU["compiled_varlen"]["pretrain"] > compiled.mfu
    assert "compiled_varlen blocks" in " ".join(varlen.notes)
    fsdp_ckpt = plan.plan_stage(
        plan.compose_stage([*base, "gradient_checkpointing=false", "trainer.strategy.checkpoint_layers=true"]), "x", {}
    )
    assert fsdp_ckpt.seconds == pytest.approx(eager.seconds)  # FSDP's checkpointing counts like ours
    with pytest.raises(SystemExit, match="not supported under DeepSpeed ZeRO-3"):
        plan.plan_stage(plan.compose_stage([*base, "strategy=deepspeed_zero3", "compile.enabled=true"]), "x", {})
    with pytest.raises(SystemExit, match="gradient_checkpointing_layers=40 but the decoder has 32 blocks"):
        plan.plan_stage(plan.compose_stage([*base, "gradient_checkpointing_layers=40"]), "x", {})
