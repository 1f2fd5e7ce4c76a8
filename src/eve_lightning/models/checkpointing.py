"""Activation checkpointing of the decoder blocks, all of them or only the first N (selective).

A checkpointed block keeps only its input and runs its forward again in the backward: less memory, more compute.
Checkpointing the first N of L blocks sits between the two ends: about N/L of the activation memory saved, N/L of
the recompute paid. ``eve_lightning.plan`` projects both.
"""

from __future__ import annotations

from torch import nn

from eve_lightning.models.compile import decoder_layers, is_checkpointed_in_graph, is_compiled


def enable_checkpointing(llm: nn.Module, layers: int | None = None) -> int:
    """Turn on activation checkpointing for the first ``layers`` decoder blocks (None: all); returns how many.

    Blocks compiled with their checkpoint inside (``models.compile``) are checkpointed already and keep their own
    flag off, so calling this again after compiling changes nothing for them; asking for fewer blocks than that is
    refused (their checkpoint cannot be taken out of the compiled graph).

    Raises:
        ValueError: ``layers`` is negative or more than the decoder has, or one of the first ``layers`` blocks was
            compiled without checkpointing (a checkpoint around a compiled forward fails in the backward), or a
            block past the first ``layers`` was compiled with its checkpoint inside.
    """
    blocks = decoder_layers(llm)
    n = len(blocks) if layers is None else int(layers)
    if not 0 <= n <= len(blocks):
        raise ValueError(
            f"gradient_checkpointing_layers={layers}: the decoder has {len(blocks)} blocks; use 0-{len(blocks)} "
            "or null for all of them"
        )
    compiled_plain = [i for i, b in enumerate(blocks[:n]) if is_compiled(b) and not is_checkpointed_in_graph(b)]
    if compiled_plain:
        raise ValueError(
            f"decoder block {compiled_plain[0]} is compiled already without checkpointing: a checkpoint around a "
            "compiled forward fails in the backward (models/compile.py); turn checkpointing on before compiling"
        )
    compiled_in_graph = [i for i, b in enumerate(blocks) if i >= n and is_checkpointed_in_graph(b)]
    if compiled_in_graph:
        raise ValueError(
            f"gradient_checkpointing_layers={n}: decoder block {compiled_in_graph[0]} is compiled with its checkpoint "
            "inside and stays checkpointed; choose the checkpointed blocks before compiling"
        )
    llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, block in enumerate(blocks):
        # a block compiled with its checkpoint inside is checkpointed already: its own flag stays off (not twice)
        block.gradient_checkpointing = i < n and not is_checkpointed_in_graph(block)
    return n
