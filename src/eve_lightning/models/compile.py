"""torch.compile of the decoder blocks and the teacher's encoder blocks, one graph shared by the blocks of a stack.

Only ``forward`` is compiled, not the module call: the forward hooks that capture the aligner's hidden states
(registered anew every step) stay outside the compiled code, so they cause no recompiles. The blocks share their
compiled graph as long as no KV cache is passed (training calls the decoder with ``use_cache=False``; a cache
would specialise the graph per block). Recompiles come from new sequence lengths; with ``dynamic=None`` torch
compiles the first length statically and switches to a dynamic-shape graph at the second, so a training run
compiles twice (four times with selective checkpointing: checkpointed and plain blocks differ). ``recompile_limit``
bounds it: past it a block falls back to eager and torch logs a warning instead of compiling for ever.

A block with activation checkpointing on (``models.checkpointing``) is compiled with its checkpoint inside: the
compiled forward calls ``torch.utils.checkpoint`` on the block's forward, so the recomputation is part of the
compiled graph (what the forward saves and what the backward recomputes come from one trace), and the block's own
checkpointing flag is turned off so that it is not checkpointed twice. A checkpoint around an already compiled
forward failed on the H100/H200 (torch 2.11): the recomputation saved other tensors than the forward ("A different
number of tensors was saved during the original forward and recomputation", also pytorch#166926).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from eve_lightning.models import attention
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)
MODES = (None, "default", "max-autotune-no-cudagraphs")


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (LLaMA family: ``model.layers``)."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the decoder blocks of {type(llm).__name__} (expected `.layers`)")
    return layers


def compile_decoder_layers(llm: nn.Module, **options: Any) -> int:
    """Compile the forward of every decoder block of an HF causal LM in place; returns how many were compiled.

    ``options``: ``compile_layers``'s keyword arguments.
    """
    n = compile_layers(decoder_layers(llm), **options)
    log.info(
        "compiled the forward of %d decoder blocks (backend %s, mode %s)",
        n,
        options.get("backend", "inductor"),
        options.get("mode"),
    )
    return n


def compile_layers(
    layers: nn.ModuleList,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    recompile_limit: int = 16,
) -> int:
    """Compile the forward of every block of a stack in place (one graph shared by the blocks); returns the count.

    Used for the decoder blocks (``compile_decoder_layers``) and the teacher's encoder blocks, whose batch (the
    images of a step) changes size: the second size switches to a dynamic-shape graph. A block compiled already
    is left as it is.

    Args:
        layers: the blocks.
        mode: torch.compile mode: None/"default", or "max-autotune-no-cudagraphs" (tunes matmuls longer). Modes
            with CUDA graphs ("reduce-overhead", "max-autotune") are refused: the rows change shape every step.
        dynamic: torch.compile's dynamic-shape setting (None: static first, dynamic after a new shape).
        backend: torch.compile backend ("inductor"; "aot_eager" checks tracing without generating kernels).
        recompile_limit: most compiled variants per code object (all blocks share one); set process-wide.

    Raises:
        ValueError: an unknown or CUDA-graph mode, or a recompile limit below 1.
    """
    if mode not in MODES:
        raise ValueError(f"compile mode {mode!r} is not supported here: use one of {sorted(map(str, MODES))}")
    if recompile_limit < 1:
        raise ValueError(f"compile recompile_limit must be at least 1, got {recompile_limit}")
    torch._dynamo.config.recompile_limit = recompile_limit
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * recompile_limit
    )
    mode = None if mode == "default" else mode
    for layer in layers:
        if is_compiled(layer):
            continue
        forward = layer.forward
        if getattr(layer, "gradient_checkpointing", False):
            layer.gradient_checkpointing = False  # the compiled forward checkpoints instead (module docstring)
            layer.checkpointed_in_graph = True
            forward = functools.partial(_checkpointed, forward)
        layer.forward = torch.compile(forward, mode=mode, dynamic=dynamic, backend=backend)
    return len(layers)


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``forward`` under non-reentrant activation checkpointing when a backward can follow (as the block's own)."""
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def is_compiled(layer: nn.Module) -> bool:
    """Whether a block's forward is compiled already (``compile_layers`` keeps it on the instance)."""
    return "forward" in layer.__dict__


def is_checkpointed_in_graph(layer: nn.Module) -> bool:
    """Whether a block was compiled with its activation checkpoint inside its compiled forward."""
    return bool(getattr(layer, "checkpointed_in_graph", False))


def is_checkpointed(layer: nn.Module) -> bool:
    """Whether a decoder block recomputes its activations in the backward (its own flag, or inside its graph)."""
    return bool(getattr(layer, "gradient_checkpointing", False)) or is_checkpointed_in_graph(layer)


@contextlib.contextmanager
def eager_generation(llm: nn.Module) -> Iterator[None]:
    """Run KV-cache generation with the training model as an inference model would: eager blocks, SDPA.

    Inside, compiled block forwards are set aside (decoding shapes change every token) and the decoder runs the
    generation backend of ``models.attention`` (SDPA in place of the packed-row training kernels); both come back
    on exit.
    """
    layers = decoder_layers(llm)
    compiled: dict[int, object] = {}
    try:
        compiled = {i: layer.__dict__.pop("forward") for i, layer in enumerate(layers) if is_compiled(layer)}
        with attention.generation_backend(llm):
            yield
    finally:
        for i, forward in compiled.items():
            layers[i].forward = forward
