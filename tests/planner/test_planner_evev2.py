"""The planner on the EVEv2 family: v2 image tokens, routed decoder FLOPs, and the five-stage evev2_7b recipe."""

from __future__ import annotations

import contextlib
import io

import pytest

from eve_lightning.planner import cli
from eve_lightning.planner.recipe import RECIPE_PATH, RECIPES
from eve_lightning.planner.throughput import MEASURED, TEXT_TOKENS, tokens_per_sample
from eve_lightning.utils.flops import routed_flops, samples_flops

QWEN25_7B_PARAMS = 7_615_616_512  # Qwen2.5-7B-Instruct: EVEv2-7B's text branch, embedding and untied LM head included

SAMPLES = {"evev2_s0": 10e6, "evev2_s1_0": 29e6, "evev2_s1_1": 48e6, "evev2_s2": 15e6, "evev2_sft": 7.3e6}
KIND = {  # the MEASURED entry each stage projects from; stage 2 and SFT keep the 1.1B SFT figure (no EVEv2 point)
    "evev2_s0": "prealign",
    "evev2_s1_0": "evev2_pretrain",
    "evev2_s1_1": "evev2_pretrain",
    "evev2_s2": "eve_1b_sft",
    "evev2_sft": "eve_1b_sft",
}


@pytest.fixture(scope="module")
def evev2_7b():
    """``python -m eve_lightning.plan recipe=evev2_7b cluster=a100_2x8``: the plans and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        plans = cli.main(["recipe=evev2_7b", "cluster=a100_2x8"])
    return plans, out.getvalue()


def test_image_tokens_follow_the_v2_rule():
    # (800 / 32)^2 cells + one split token per row of 25 + one class token = 651; 2551 at 1600 px
    assert tokens_per_sample("pretrain", 800, square=True, family="evev2") == 651 + TEXT_TOKENS["pretrain"]
    assert tokens_per_sample("pretrain", 1600, square=True, family="evev2") == 2551 + TEXT_TOKENS["pretrain"]
    assert 640 < tokens_per_sample("pretrain", 800, family="evev2") - TEXT_TOKENS["pretrain"] < 670


def test_routed_flops_reduce_to_the_benchmark_count_when_both_branches_agree():
    for trained in (True, False):
        want = samples_flops(1000, 4, 64, [700.0], trained)
        assert routed_flops(1000, 4, 64, 500.0, 200.0, trained, trained) == pytest.approx(want)
    # stage 1: image tokens run trained vision copies (6 per parameter), text tokens frozen text weights (4)
    mixed = routed_flops(1000, 4, 64, 500.0, 200.0, True, False)
    assert mixed == pytest.approx((6 * 500 + 4 * 200) * 1000 + 6 * 4 * 64 * 700.0**2)
    # the LM head (300 parameters, with the text weights) at 150 supervised positions only
    for trained in (True, False):
        want = samples_flops(1000, 4, 64, [700.0], trained, 300, [150.0])
        assert routed_flops(1000, 4, 64, 500.0, 200.0, trained, trained, 300, 150.0) == pytest.approx(want)
    headed = routed_flops(1000, 4, 64, 500.0, 200.0, True, False, 300, 150.0)
    assert headed == pytest.approx(mixed + 4 * 300 * 150.0)  # frozen text weights: 4 per head parameter


def test_recipe_plans_the_five_stages_with_their_samples_and_days(evev2_7b):
    plans, text = evev2_7b
    assert [p.name for p in plans] == list(SAMPLES)
    assert [e for e, _ in RECIPES["evev2_7b"]] == ["evev2_7b"] * 5
    for p in plans:
        assert p.family == "evev2" and p.n_gpus == 16
        assert p.samples == pytest.approx(SAMPLES[p.name], rel=1e-3)
        assert p.measured is MEASURED[KIND[p.name]]
        assert p.recompute == pytest.approx(3 / 2 if p.name == "evev2_s0" else 4 / 3)  # none of these checkpointed
        assert p.image_size == (800 if p.name in ("evev2_s0", "evev2_s1_0") else 1600)
        assert p.days > 0 and f"{p.days:.2f}" in text
        assert not p.off_path  # planned on the measured path (RECIPE_PATH)
    s0, s1_0, s1_1, s2, sft = plans
    assert sft.flops_per_sample == pytest.approx(s2.flops_per_sample)  # the same decoder, tokens and branches
    assert s0.tokens_per_sample == pytest.approx(tokens_per_sample("pretrain", 800, family="evev2"))
    assert "text weights frozen, vision weights trained" in s1_0.notes[-1]
    assert "text weights frozen, vision weights frozen" in s0.notes[-1]
    # routed: the decoder FLOPs count one branch, Qwen2.5-7B without the input embedding and the LM head (~6.53B),
    # per token, and the LM head (~0.55B) at the 97.74 supervised positions of an SFT sample
    branch = s2.flops_per_sample / 6 / s2.tokens_per_sample
    assert 6.5e9 < branch < 6.9e9  # attention adds a few %; the vision copies (another ~6.5B) are not counted
    head = 152064 * 3584
    words = TEXT_TOKENS["sft"]  # text tokens per sample
    want = routed_flops(
        QWEN25_7B_PARAMS - 2 * head, 28, 3584, s2.tokens_per_sample - words, words, True, True, head, 97.74
    )
    assert s2.flops_per_sample == pytest.approx(want)
    assert s1_1.flops_per_sample < s2.flops_per_sample * s1_1.tokens_per_sample / s2.tokens_per_sample
    assert "16 nodes x 8 GPUs" in text
    # stages 1.x on the EVEv2 measurement; the others say that theirs is EVE v1's
    assert text.count("EVEv2: the routed evev2_1b decoder's MFU (every weight trained, 800 px)") == 2
    assert text.count("EVEv2: no EVEv2 measurement of this stage kind; the EVE v1") == 3
    assert text.count("the EVE v1 sft MFU (eve_1b)") == 2 and text.count("the EVE v1 prealign MFU (eve_7b)") == 1
    assert "experiment=evev2_7b +stage=<stage> " + " ".join(RECIPE_PATH) in text
