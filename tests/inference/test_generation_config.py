"""Sampling settings: the one range check the chat CLI and the web demo share, and what its ends mean."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from eve_lightning.inference.generate import GenerationConfig, GenerationConfigError, sample_next


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1},
        {"temperature": 5.0, "top_p": 1e-6},
        {"temperature": 1, "top_p": 1, "max_new_tokens": 4096},  # ints are numbers too
    ],
)
def test_settings_in_range_are_kept(settings):
    gen = GenerationConfig(**settings)
    assert all(getattr(gen, k) == v for k, v in settings.items())


@pytest.mark.parametrize(
    "settings, option, phrase",
    [
        ({"top_p": 0.0, "temperature": 1.0}, "top_p", "use temperature 0"),
        ({"top_p": -0.5}, "top_p", "must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p", "1 samples from all tokens"),
        ({"top_p": math.nan}, "top_p", "must be in (0, 1]"),
        ({"temperature": -1.0}, "temperature", "must be >= 0"),
        ({"temperature": math.inf}, "temperature", "must be >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens", ">= 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens", "whole number"),
    ],
)
def test_settings_out_of_range_are_refused_with_the_option_named(settings, option, phrase):
    with pytest.raises(GenerationConfigError) as refused:
        GenerationConfig(**settings)
    assert refused.value.option == option and phrase in refused.value.reason
    assert str(refused.value).startswith(f"{option} must be")


def test_a_changed_copy_is_checked_too():
    with pytest.raises(GenerationConfigError):
        dataclasses.replace(GenerationConfig(), top_p=0.0)


def test_the_smallest_top_p_samples_the_most_likely_token():
    """Near 0, top-p keeps only the top token: sampling is then greedy, and never fails."""
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    gen = GenerationConfig(temperature=1.0, top_p=1e-6)
    picked = sample_next(logits, gen, torch.Generator().manual_seed(1))
    assert torch.equal(picked, logits.argmax(-1))
