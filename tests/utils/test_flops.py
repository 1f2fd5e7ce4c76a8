"""The benchmark's decoder FLOP count: the LM head only at the supervised positions, every other parameter at every
token, 6 per parameter and token for a trained decoder and 4 for a frozen one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eve_lightning.utils.flops import (
    DecoderParams,
    decoder_params,
    routed_flops,
    sample_token_totals,
    samples_flops,
    step_flops,
)
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
        split = (N, 0) if trained else (0, N)
        head = {"head": HEAD, "head_trained": trained, "supervised": supervised}
        assert step_flops(*split, LAYERS, WIDTH, tokens, squares, **head) == want
        # one branch: image tokens that run the same weights change nothing
        assert step_flops(*split, LAYERS, WIDTH, tokens, squares, **head, image_tokens=25.0) == pytest.approx(want)


def test_routed_tokens_count_6_or_4_as_their_branch_trains():
    # EVEv2 stage 1: 25 image tokens run trained vision copies, 15 text tokens frozen text weights (and the head)
    attention = 6 * LAYERS * WIDTH * (10**2 + 30**2)
    head = {"head": HEAD, "head_trained": False, "supervised": 11.0, "image_tokens": 25.0}
    got = step_flops(0, N, LAYERS, WIDTH, 40.0, 1000.0, **head, image=(N, 0))
    assert got == pytest.approx(6 * N * 25 + 4 * N * 15 + 4 * HEAD * 11 + attention)
    # every weight frozen: 4/6 of the attention
    frozen = step_flops(0, N, LAYERS, WIDTH, 40.0, 1000.0, **head, image=(0, N))
    assert frozen == pytest.approx(4 * (N * 40 + HEAD * 11) + attention * 4 / 6)
    # one sample: the planner's routed count
    assert routed_flops(N, LAYERS, WIDTH, 25.0, 15.0, True, False, HEAD, 11.0) == pytest.approx(
        step_flops(0, N, LAYERS, WIDTH, 40.0, 40.0**2, **head, image=(N, 0))
    )


def test_a_partly_frozen_decoder_counts_6_per_trained_and_4_per_frozen_parameter():
    tokens, squares, supervised = sum(LENGTHS), sum(n * n for n in LENGTHS), sum(SUPERVISED)
    attention = 6 * LAYERS * WIDTH * squares  # some decoder weight trains: the full attention term
    got = step_flops(600, 400, LAYERS, WIDTH, tokens, squares, head=HEAD, head_trained=False, supervised=supervised)
    assert got == pytest.approx(6 * 600 * tokens + 4 * 400 * tokens + 4 * HEAD * supervised + attention)
    # only the head trains: it counts 6, the body 4, the attention whole
    head_only = step_flops(0, N, LAYERS, WIDTH, tokens, squares, head=HEAD, head_trained=True, supervised=supervised)
    assert head_only == pytest.approx(4 * N * tokens + 6 * HEAD * supervised + attention)
    # between the wholly frozen and the wholly trained counts, which stay those of samples_flops
    frozen, trained = (samples_flops(N, LAYERS, WIDTH, LENGTHS, t, HEAD, SUPERVISED) for t in (False, True))
    assert frozen < got < trained


def tiny_llm(tied: bool = False):
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_params_split_the_body_trained_and_frozen_and_the_head_apart(tied):
    llm = tiny_llm(tied)
    embed, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    assert (head is embed) == tied
    llm.requires_grad_(False)
    llm.model.layers[0].requires_grad_(True)
    layer = sum(p.numel() for p in llm.model.layers[0].parameters())
    total = sum(p.numel() for p in llm.parameters())  # a tied head listed once
    body = total - embed.numel() - (0 if tied else head.numel())
    got = decoder_params(llm)
    want = DecoderParams(trained=layer, frozen=body - layer, head=50 * 8, head_trained=False, layers=2, hidden=8)
    assert got == want and got.body == body
    whole = got.whole(True)
    assert (whole.trained, whole.frozen, whole.head_trained) == (body, 0, True)
    assert got.whole(False) == replace(want, trained=0, frozen=body)


def test_decoder_params_read_the_full_size_of_zero3_partitioned_parameters():
    llm = tiny_llm()
    whole = decoder_params(llm)
    for p in llm.parameters():  # as DeepSpeed ZeRO-3 leaves them: an empty local tensor, the full size apart
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert decoder_params(llm) == whole
    assert decoder_params(llm, numel=lambda p: p.numel()).body == 0  # without ds_numel: the local shard only


def test_vision_copies_make_the_image_branch_each_in_place_of_its_text_weight():
    llm = tiny_llm()
    layer = llm.model.layers[0]
    copies = [(torch.nn.Parameter(torch.zeros_like(t)), t) for t in layer.mlp.parameters()]  # stand-in copies
    for copy, _ in copies:
        llm.register_parameter(f"copy{len(llm._parameters)}", copy)
    mlp = sum(t.numel() for _, t in copies)
    llm.requires_grad_(False)
    for copy, _ in copies:
        copy.requires_grad_(True)  # only the copies train (EVEv2 stage 1)
    got = decoder_params(llm, vision_copies=copies)
    body = decoder_params(tiny_llm()).body  # the copies are not added to the text branch
    assert (got.trained, got.frozen) == (0, body)
    assert got.image == (mlp, body - mlp)
    tokens, squares, images = 40.0, 1000.0, 25.0
    attention = 6 * 2 * 8 * squares
    want = 4 * body * 15 + (6 * mlp + 4 * (body - mlp)) * images + 4 * got.head * 11 + attention
    assert got.flops(tokens, squares, 11.0, images) == pytest.approx(want)


def test_token_totals_square_each_sample_of_packed_and_padded_rows():
    packed = packed_rows([[3, 5, 2], [7], []], 12)  # a row of three samples, one of one, an empty row
    assert sample_token_totals(packed).tolist() == [17, 9 + 25 + 4 + 49]
    padded = torch.tensor([[0] * 4 + [-1] * 2, [0] * 6, [-1] * 6])  # one sample per row: 0 on real tokens
    assert sample_token_totals(padded).tolist() == [10, 16 + 36]
    # a sample id that comes back later in its row is still one sample
    split = torch.tensor([[0, 0, 1, 1, 1, 0, -1]])
    assert sample_token_totals(split).tolist() == [6, 9 + 9]
