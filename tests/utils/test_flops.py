"""The benchmark's decoder FLOP count: the LM head only at the supervised positions, every other parameter at every
token, 6 per parameter and token for a trained decoder and 4 for a frozen one."""

from __future__ import annotations

import pytest

from eve_lightning.utils.flops import decoder_flops_per_token, samples_flops

N, HEAD, LAYERS, WIDTH = 1000, 300, 2, 8  # parameters without the head, the head's, the decoder's shape
LENGTHS, SUPERVISED = [10.0, 30.0], [4.0, 7.0]  # T = 40 tokens, S = 11 supervised positions


def test_the_head_counts_at_the_supervised_positions_only():
    tokens, supervised = sum(LENGTHS), sum(SUPERVISED)
    attention = 6 * LAYERS * WIDTH * (10**2 + 30**2)
    every_token = samples_flops(N + HEAD, LAYERS, WIDTH, LENGTHS, True)  # the head inside the parameters
    assert every_token == 6 * (N + HEAD) * tokens + attention
    corrected = samples_flops(N, LAYERS, WIDTH, LENGTHS, True, HEAD, SUPERVISED)
    assert corrected == 6 * N * tokens + 6 * HEAD * supervised + attention
    assert corrected == every_token - 6 * HEAD * (tokens - supervised)
    # the head given apart without supervised positions counts at every token: the earlier convention
    assert samples_flops(N, LAYERS, WIDTH, LENGTHS, True, HEAD) == every_token


def test_a_frozen_decoder_counts_4_per_parameter_and_4_6_of_the_attention():
    tokens, supervised = sum(LENGTHS), sum(SUPERVISED)
    attention = 4 * LAYERS * WIDTH * (10**2 + 30**2)
    frozen = samples_flops(N, LAYERS, WIDTH, LENGTHS, False, HEAD, SUPERVISED)
    assert frozen == pytest.approx(4 * N * tokens + 4 * HEAD * supervised + attention)
    every_token = samples_flops(N + HEAD, LAYERS, WIDTH, LENGTHS, False)
    assert frozen == pytest.approx(every_token - 4 * HEAD * (tokens - supervised))


def test_the_per_token_estimate_is_6n_plus_non_causal_attention():
    per_token = decoder_flops_per_token(N, LAYERS, WIDTH, 40, True)
    assert per_token == 6 * N + 12 * LAYERS * WIDTH * 40
    assert decoder_flops_per_token(N, LAYERS, WIDTH, 40, False) == 4 * N + 8 * LAYERS * WIDTH * 40
