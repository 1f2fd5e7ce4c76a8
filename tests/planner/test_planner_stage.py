"""One stage's projection: days from the measured table, card scaling, and what strategy, checkpointing and the
planner options change; what training refuses is not planned."""

from __future__ import annotations

import pytest

from eve_lightning.planner import cli
from eve_lightning.planner import throughput as tt
from eve_lightning.planner.recipe import RECIPE_PATH
from eve_lightning.planner.stage import recompute_factor, stage_recompute
from eve_lightning.utils.flops import samples_flops

VICUNA_7B_HEAD = 32000 * 4096  # Vicuna-7B's LM head, as large as its input embedding
VICUNA_7B_BODY = 6_738_415_616 - 2 * VICUNA_7B_HEAD  # Vicuna-7B parameters without the input embedding and the head


def test_stage_days_follow_from_the_measured_table(eve7b):
    """days = samples / (samples/s per GPU x GPUs) / 86400, the samples/s rebuilt here from the table's figures."""
    plans, _ = eve7b
    for p in plans:
        m = tt.MEASURED[p.name]
        assert p.measured is m and m.model == "eve_7b"  # every EVE-7B stage on a 7B point of its kind
        trained = p.name != "prealign"
        # the benchmark's samples: 405 image tokens on average, 131 caption tokens; SFT 95 % images, 192 text tokens;
        # the LM head at the supervised positions only: 130 per caption, 97.74 per SFT sample
        tokens = {"prealign": 405 + 131, "pretrain": 405 + 131, "sft": 0.95 * 405 + 192}[p.name]
        supervised = {"prealign": 130, "pretrain": 130, "sft": 97.74}[p.name]
        flops = samples_flops(VICUNA_7B_BODY, 32, 4096, [tokens], trained, VICUNA_7B_HEAD, [supervised])
        assert p.tokens_per_sample == pytest.approx(tokens) and p.flops_per_sample == pytest.approx(flops)
        # Every decoder layer checkpointed: the forward runs twice. The frozen decoder was measured without
        # checkpointing (x3/2 added); the trained one with every block checkpointed, already in its MFU (x1).
        recompute = 1.0 if trained else 3 / 2
        assert m.checkpointing == trained and p.recompute == pytest.approx(recompute)
        per_gpu = m.mfu * 989e12 / flops * (312 / 989) / recompute * 0.9
        assert p.samples_per_s == pytest.approx(per_gpu)
        assert p.days == pytest.approx(p.samples / (per_gpu * 16) / 86400)


def test_the_projection_reproduces_the_measured_7b_run(stage):
    """On the measured card, one GPU, no checkpointing, the measured tokens: the measured samples/s comes back."""
    m = tt.MEASURED["prealign"]
    p = stage(
        "eve7b_prealign_r672",
        *RECIPE_PATH,
        "cluster=gpu1",
        "gradient_checkpointing=false",
        options={"tokens_per_sample": {"pretrain": m.tokens_per_sample}},
    )
    assert (p.card_ratio, p.recompute, p.efficiency, p.n_gpus) == (1.0, 1.0, 1.0, 1)
    assert p.samples_per_s == pytest.approx(m.samples_per_s, rel=0.01)  # mean length vs per-sample attention


@pytest.mark.parametrize("stage_name", ["pretrain", "sft"])
def test_the_projection_reproduces_the_measured_7b_full_parameter_runs(stage, stage_name):
    """Checkpointed as the run was (every block), one GPU of the measured card, its tokens: its samples/s comes back,
    with no recompute added on top of the measured MFU."""
    m = tt.MEASURED[stage_name]
    p = stage(
        f"eve7b_{stage_name}_r672",
        *RECIPE_PATH,
        "cluster=gpu1",
        "gradient_checkpointing=true",
        options={"tokens_per_sample": {stage_name: m.tokens_per_sample}},
    )
    assert (p.card_ratio, p.recompute, p.efficiency, p.n_gpus) == (1.0, 1.0, 1.0, 1)
    assert p.samples_per_s == pytest.approx(m.samples_per_s, rel=0.01)


def test_the_hd_sft_takes_the_7b_sft_point_measured_at_672_px(capsys):
    plans = cli.main(["recipe=eve7b_hd", "cluster=a100_2x8"])
    hd = plans[-1]
    assert hd.name == "sft_hd" and hd.measured is tt.MEASURED["sft"] and hd.recompute == 1.0
    out = capsys.readouterr().out
    assert "measured at 672 px: its MFU carried to 1344 px (not measured)" in out
    assert f"{hd.days:.2f}" in out and tt.MEASURED["sft"].json in out


def test_card_scaling_is_the_dense_bf16_peak_ratio(eve7b, stage):
    plans, out = eve7b
    assert all(p.card_ratio == 312 / 989 for p in plans)
    assert "x 0.315 (peak ratio 312/989)" in out
    a100 = stage("eve7b_pretrain_r672", *RECIPE_PATH, "cluster=a100_2x8")
    h = stage("eve7b_pretrain_r672", *RECIPE_PATH, "cluster=a100_2x8", "perf.peak_tflops=989")
    assert a100.days == pytest.approx(h.days * 989 / 312)


def test_recompute_factor_counts_the_forward_again():
    assert recompute_factor(False, True) == 1.0
    assert recompute_factor(True, True) == pytest.approx(4 / 3)  # trained: forward 2 + backward 4, +2
    assert recompute_factor(True, False) == pytest.approx(3 / 2)  # frozen: forward 2 + backward 2, +2
    assert recompute_factor(True, True, fraction=0.25) == pytest.approx(1 + 0.25 / 3)


def test_the_recompute_is_counted_once_over_a_checkpointed_measurement():
    """A measured MFU whose step checkpointed every block already holds the recompute: the stage's factor is taken
    over the run's, so every block checkpointed gives 1, fewer blocks run faster than measured."""
    checkpointed, plain = tt.MEASURED["pretrain"], tt.MEASURED["prealign"]
    assert checkpointed.checkpointing and not plain.checkpointing
    assert stage_recompute(checkpointed, True, True) == 1.0
    assert stage_recompute(checkpointed, False, True) == pytest.approx(3 / 4)
    assert stage_recompute(checkpointed, True, True, fraction=0.5) == pytest.approx((1 + 0.5 / 3) / (4 / 3))
    assert stage_recompute(plain, True, False) == pytest.approx(3 / 2)  # measured without: the whole factor
    assert stage_recompute(plain, False, False) == 1.0


def test_strategy_checkpointing_and_options_move_the_plan(stage):
    base = ["cluster=a100_2x8", "data.batch_size=8"]
    zero3 = stage("eve7b_pretrain_r672", *base)
    zero2 = stage("eve7b_pretrain_r672", "strategy=deepspeed_zero2", *base)
    assert zero2.memory.parts["weights (trained)"] == pytest.approx(16 * zero3.memory.parts["weights (trained)"])
    no_ckpt = stage("eve7b_pretrain_r672", "gradient_checkpointing=false", *base)
    assert no_ckpt.memory.parts["activations (decoder)"] > 5 * zero3.memory.parts["activations (decoder)"]
    faster = stage("eve7b_pretrain_r672", *base, options={"mfu": {"pretrain": 0.6}})
    assert faster.seconds == pytest.approx(zero3.seconds * tt.MEASURED["pretrain"].mfu / 0.6)
    assert zero3.seconds == pytest.approx(no_ckpt.seconds * 4 / 3)  # the forward runs again in the backward
    frozen = [stage("eve7b_prealign_r672", *base, *extra) for extra in ([], ["gradient_checkpointing=false"])]
    assert frozen[0].seconds == pytest.approx(frozen[1].seconds * 3 / 2)
    half = stage("eve7b_pretrain_r672", "gradient_checkpointing_layers=16", *base)
    assert half.seconds == pytest.approx(no_ckpt.seconds * (1 + 0.5 / 3))  # half the layers recompute
    act = lambda p: p.memory.parts["activations (decoder)"]  # noqa: E731
    assert act(zero3) < act(half) < act(no_ckpt)
    assert act(half) == pytest.approx(act(zero3) / 2 + act(no_ckpt) / 2 - act(no_ckpt) / 32 / 2)
    slower = stage("eve7b_pretrain_r672", *base, options={"scaling_efficiency": 0.45})
    assert slower.seconds == pytest.approx(zero3.seconds * 2)


def test_what_training_refuses_is_not_planned(stage):
    base = ["cluster=a100_2x8", "strategy=fsdp"]
    fsdp = stage(
        "eve7b_pretrain_r672", *base, "gradient_checkpointing=false", "trainer.strategy.checkpoint_layers=true"
    )
    assert fsdp.seconds == pytest.approx(stage("eve7b_pretrain_r672", *base).seconds)  # FSDP's checkpointing counts
    with pytest.raises(SystemExit, match="not supported under DeepSpeed ZeRO-3"):
        stage("eve7b_pretrain_r672", *base, "strategy=deepspeed_zero3", "compile.enabled=true")
    with pytest.raises(SystemExit, match="gradient_checkpointing_layers=40 but the decoder has 32 blocks"):
        stage("eve7b_pretrain_r672", *base, "gradient_checkpointing_layers=40")
