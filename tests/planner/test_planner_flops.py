"""The planner's decoder FLOPs take the split of ``utils.flops.decoder_params``: trained and frozen decoder
parameters apart, as the training callback counts them; a given ``plan.tokens_per_sample`` changes image tokens."""

from __future__ import annotations

import pytest

from eve_lightning.planner import throughput as tt
from eve_lightning.planner.recipe import RECIPE_PATH
from eve_lightning.utils.flops import samples_flops, step_flops

VICUNA_7B_HEAD = 32000 * 4096
VICUNA_7B_BODY = 6_738_415_616 - 2 * VICUNA_7B_HEAD  # without the input embedding and the LM head
VICUNA_7B_LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # attention, MLP and the two RMSNorms


def test_a_partly_trained_decoder_counts_6_per_trained_and_4_per_frozen_parameter(stage):
    p = stage(
        "eve7b_pretrain_r672",
        *RECIPE_PATH,
        "cluster=gpu1",
        "stage.trainable=[vlm.patch_embed,vlm.projector,vlm.llm.model.layers.0]",
    )
    n = p.tokens_per_sample
    supervised = tt.SUPERVISED_TOKENS["pretrain"]
    layer, frozen = VICUNA_7B_LAYER, VICUNA_7B_BODY - VICUNA_7B_LAYER
    want = step_flops(layer, frozen, 32, 4096, n, n * n, head=VICUNA_7B_HEAD, supervised=supervised)
    assert p.flops_per_sample == pytest.approx(want)
    assert want == pytest.approx(
        6 * layer * n + 4 * frozen * n + 4 * VICUNA_7B_HEAD * supervised + 6 * 32 * 4096 * n * n
    )
    wholly = [samples_flops(VICUNA_7B_BODY, 32, 4096, [n], t, VICUNA_7B_HEAD, [supervised]) for t in (False, True)]
    assert wholly[0] < p.flops_per_sample < wholly[1]
    # its notes and recompute take it as trained (weight gradients are computed), and say that it is only partly
    frozen_b = (VICUNA_7B_BODY - VICUNA_7B_LAYER + 2 * VICUNA_7B_HEAD) / 1e9
    assert any(f"decoder partly trained ({frozen_b:.2f}B of its parameters frozen)" in note for note in p.notes)
    whole = stage("eve7b_pretrain_r672", *RECIPE_PATH, "cluster=gpu1")
    assert p.recompute == whole.recompute
    assert any(note.endswith("decoder trained") for note in whole.notes)


@pytest.mark.parametrize("name", ["evev2_s1_0", "evev2_s2"])
def test_giving_the_default_tokens_per_sample_keeps_the_text_tokens_and_the_flops(stage, name):
    """A given count for a task of the benchmark keeps its text tokens (and supervised positions): the image tokens
    are the rest. Stage 1.0's text weights are frozen and its vision copies trained, so the split matters."""
    default = stage("evev2_7b", f"+stage={name}", *RECIPE_PATH, "cluster=a100_2x8")
    given = stage(
        "evev2_7b",
        f"+stage={name}",
        *RECIPE_PATH,
        "cluster=a100_2x8",
        options={"tokens_per_sample": {"pretrain": default.tokens_per_sample, "sft": default.tokens_per_sample}},
    )
    assert given.tokens_per_sample == pytest.approx(default.tokens_per_sample)
    assert given.flops_per_sample == pytest.approx(default.flops_per_sample)
