"""The benchmark's decoder FLOP count: the LM head only at the supervised positions, every other parameter at every
token, 6 per parameter and token for a trained decoder and 4 for a frozen one."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.utils.flops import routed_flops, sample_token_totals, samples_flops, step_flops
from tests.helpers.packed_rows import packed_rows

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


def test_the_step_count_from_totals_is_the_samples_count():
    tokens, squares, supervised = sum(LENGTHS), sum(n * n for n in LENGTHS), sum(SUPERVISED)
    for trained in (True, False):
        want = samples_flops(N, LAYERS, WIDTH, LENGTHS, trained, HEAD, SUPERVISED)
        assert step_flops(N, LAYERS, WIDTH, tokens, squares, trained, HEAD, supervised) == want
        # one branch: image tokens that run the same weights change nothing
        assert step_flops(N, LAYERS, WIDTH, tokens, squares, trained, HEAD, supervised, 25.0) == pytest.approx(want)


def test_routed_tokens_count_6_or_4_as_their_branch_trains():
    # EVEv2 stage 1: 25 image tokens run trained vision copies, 15 text tokens frozen text weights (and the head)
    attention = 6 * LAYERS * WIDTH * (10**2 + 30**2)
    got = step_flops(N, LAYERS, WIDTH, 40.0, 1000.0, False, HEAD, 11.0, 25.0, True)
    assert got == pytest.approx(6 * N * 25 + 4 * N * 15 + 4 * HEAD * 11 + attention)
    # every weight frozen: 4/6 of the attention
    frozen = step_flops(N, LAYERS, WIDTH, 40.0, 1000.0, False, HEAD, 11.0, 25.0, False)
    assert frozen == pytest.approx(4 * (N * 40 + HEAD * 11) + attention * 4 / 6)
    # one sample: the planner's routed count
    assert routed_flops(N, LAYERS, WIDTH, 25.0, 15.0, True, False, HEAD, 11.0) == pytest.approx(
        step_flops(N, LAYERS, WIDTH, 40.0, 40.0**2, False, HEAD, 11.0, 25.0, True)
    )


def test_token_totals_square_each_sample_of_packed_and_padded_rows():
    packed = packed_rows([[3, 5, 2], [7], []], 12)  # a row of three samples, one of one, an empty row
    assert sample_token_totals(packed).tolist() == [17, 9 + 25 + 4 + 49]
    padded = torch.tensor([[0] * 4 + [-1] * 2, [0] * 6, [-1] * 6])  # one sample per row: 0 on real tokens
    assert sample_token_totals(padded).tolist() == [10, 16 + 36]
    # a sample id that comes back later in its row is still one sample
    split = torch.tensor([[0, 0, 1, 1, 1, 0, -1]])
    assert sample_token_totals(split).tolist() == [6, 9 + 9]
