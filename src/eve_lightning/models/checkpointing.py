"""Activation checkpointing of the decoder blocks, all of them or only the first N (selective).

A checkpointed block keeps only its input and runs its forward again in the backward: less memory, more compute.
Checkpointing the first N of L blocks sits between the two ends: about N/L of the activation memory saved, N/L of
the recompute paid. ``eve_lightning.plan`` projects both.
"""

from __future__ import annotations

from torch import nn

from eve_lightning.models.compile import decoder_layers


def enable_checkpointing(llm: nn.Module, layers: int | None = None) -> int:
    """Turn on activation checkpointing for the first ``layers`` decoder blocks (None: all); returns how many.

    Raises:
        ValueError: ``layers`` is negative or more than the decoder has.
    """
    blocks = decoder_layers(llm)
    n = len(blocks) if layers is None else int(layers)
    if not 0 <= n <= len(blocks):
        raise ValueError(
            f"gradient_checkpointing_layers={layers}: the decoder has {len(blocks)} blocks; use 0-{len(blocks)} "
            "or null for all of them"
        )
    llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, block in enumerate(blocks):
        block.gradient_checkpointing = i < n
    return n
