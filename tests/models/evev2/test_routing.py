"""Routing: the modality-ordered stream, its round trip to sequence order, and which function sees which token."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.models.evev2.routing import Routing

MASK = torch.tensor([[False, True, True, False, False], [True, False, False, False, True]])  # [B=2, L=5]


def test_routed_stream_holds_text_rows_then_image_rows_each_in_sequence_order():
    r = Routing.build(MASK, "routed", 2, 5)
    assert r.mode == "routed" and r.n_text == 6
    seq = torch.arange(10.0).view(2, 5, 1)  # value = flat sequence index
    stream = r.from_sequence(seq)
    assert stream.flatten().tolist() == [0, 3, 4, 6, 7, 8, 1, 2, 5, 9]
    assert torch.equal(r.to_sequence(stream), seq)


def test_each_token_goes_through_its_own_function_only():
    x = torch.randn(2, 5, 3)
    want = torch.where(MASK[..., None], x * 10, x - 1)
    seen = []

    def text(t):
        seen.append(("text", t.shape[0]))
        return t - 1

    def vision(t):
        seen.append(("vision", t.shape[0]))
        return t * 10

    r = Routing.build(MASK, "routed", 2, 5)
    torch.testing.assert_close(r.to_sequence(r.apply(r.from_sequence(x), text, vision)), want)
    assert seen == [("text", 6), ("vision", 4)]
    seen.clear()
    d = Routing.build(MASK, "dense", 2, 5)  # the original: both functions on every token, blended
    torch.testing.assert_close(d.to_sequence(d.apply(d.from_sequence(x), text, vision)), want)
    assert seen == [("text", 10), ("vision", 10)]


@pytest.mark.parametrize("mask", [None, torch.zeros(2, 5, dtype=torch.bool)], ids=["no-mask", "no-image-token"])
def test_without_image_tokens_only_text_weights_run(mask):
    r = Routing.build(mask, "routed", 2, 5)
    assert r.mode == "text" and not r.uses_vision
    x = torch.randn(10, 3)
    assert torch.equal(r.apply(x, lambda t: t + 1, lambda t: pytest.fail("a vision function ran")), x + 1)


def test_a_shared_part_runs_once_on_all_rows_and_bad_arguments_are_refused():
    r = Routing.build(MASK, "routed", 2, 5)
    calls = []
    shared = lambda t: calls.append(t.shape[0]) or t  # noqa: E731
    r.apply(torch.randn(10, 3), shared, shared)
    assert calls == [10]
    with pytest.raises(ValueError, match="routing must be one of"):
        Routing.build(MASK, "sparse", 2, 5)
    with pytest.raises(ValueError, match=r"vision_mask has shape \(2, 5\), expected \[B, L\] = \[2, 6\]"):
        Routing.build(MASK, "routed", 2, 6)
