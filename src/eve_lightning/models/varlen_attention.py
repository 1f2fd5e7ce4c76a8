"""Attention of packed rows through PyTorch's own variable-length flash kernel (``torch.nn.attention.varlen``).

``attn_implementation: torch_varlen`` (registered with transformers by ``register()``) flattens the [B, L] rows into
one stream of B*L tokens cut into segments: a new segment starts at every row start and wherever the sample id
changes. Each segment attends causally to itself only, the rule of the FlexAttention block mask and of the dense
mask (padding runs are segments of their own, cut into short pieces; their outputs are never read). No [L, L] mask
is built and no empty block is visited: the kernel works from the segment offsets alone.

The kernel needs CUDA and half precision (float32 inputs under autocast are cast to its dtype, as SDPA does);
elsewhere the same rule runs as SDPA with a dense block-diagonal mask (tests, CPU runs). KV-cache generation uses
SDPA (``models.attention.generation_backend``). The backend choice itself lives in ``models.attention``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

NAME = "torch_varlen"


PAD_SEGMENT = 128  # padding runs are cut into segments of at most this many tokens (the kernel's block size)


def segment_offsets(seq: torch.Tensor, pad_segment: int = PAD_SEGMENT) -> torch.Tensor:
    """Offsets of the segments of flattened packed rows.

    Args:
        seq: [B, L] sample id of every token (-1 on padding).
        pad_segment: padding runs are cut into segments of at most this length. Their outputs are never read, so
            where they are cut does not matter; cutting them short keeps the longest segment (which sizes the
            kernel's grid) a real sample.

    Returns:
        int32 [N + 1]: segment i is tokens ``offsets[i]:offsets[i + 1]`` of the [B * L] stream.

    The number of segments depends on the data, so this reads one count back from the GPU.
    """
    length = seq.shape[1]
    flat = seq.reshape(-1)  # [T]
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True  # a row always starts a segment
    index = torch.arange(flat.numel(), device=flat.device)
    starts |= (flat < 0) & (index % pad_segment == 0)
    first = starts.nonzero().squeeze(1)  # [N]
    return torch.cat([first, first.new_tensor([flat.numel()])]).to(torch.int32)


def decoder_kwargs(seq: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments for the decoder's forward: transformers hands them to every attention call.

    ``max_length_*`` is the longest segment, rounded up to a multiple of ``PAD_SEGMENT`` (so that compiled blocks
    see few distinct values) and read back once per forward, before the decoder is queued. The flash kernel
    launches ``max_length / block`` query (forward) and key (backward) blocks for every segment and head, and
    the blocks past a segment's end return at once. With the row length as the bound (8192 for ~550-token
    samples), nine in ten blocks were launched for nothing: attention, forward + backward, took 40.7 instead of
    32.8 ms per eve_1b pretraining step (H200, ``benchmarks/README.md``).
    """
    offsets = segment_offsets(seq)
    longest = int((offsets[1:] - offsets[:-1]).max())
    bound = min(-(-longest // PAD_SEGMENT) * PAD_SEGMENT, seq.shape[1])
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": bound, "max_length_k": bound}


try:
    from torch.nn.attention.varlen import varlen_attn as _VARLEN_ATTN

    _VARLEN_PARAMS = frozenset(inspect.signature(_VARLEN_ATTN).parameters)
except ImportError:  # torch before 2.10
    _VARLEN_ATTN, _VARLEN_PARAMS = None, frozenset()


def kernel_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (the kernel itself needs CUDA and half precision)."""
    return _VARLEN_ATTN is not None


def _flash(q, k, v, offsets, max_len: int, scale: float) -> torch.Tensor:
    """[T, H, D] -> [T, H, D] through ``varlen_attn``, whose keyword arguments differ between torch releases.

    The signature is read once at import, so nothing is inspected inside a compiled block.
    """
    kw: dict[str, Any] = {"is_causal": True} if "is_causal" in _VARLEN_PARAMS else {"window_size": (-1, 0)}
    if "scale" in _VARLEN_PARAMS:
        kw["scale"] = scale
    elif not math.isclose(scale, q.shape[-1] ** -0.5):
        raise ValueError(f"this torch's varlen_attn has no scale argument; the model needs scale {scale}")
    if k.shape[1] != q.shape[1] and "enable_gqa" in _VARLEN_PARAMS:
        kw["enable_gqa"] = True  # releases that ask; the flash kernel itself takes fewer key/value heads as they are
    return _VARLEN_ATTN(q, k, v, offsets, offsets, max_len, max_len, **kw)


def kernel_dtype(dtype: torch.dtype, device_type: str) -> torch.dtype | None:
    """The half precision the kernel runs in for inputs of ``dtype``, or None when it cannot run.

    Under autocast the projections give half precision but the rotary embedding (float32 cos/sin of float32 input
    embeddings) promotes query and key back to float32; SDPA and FlexAttention cast them to the autocast dtype
    themselves, so this kernel does too.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    if torch.is_autocast_enabled(device_type):
        wanted = torch.get_autocast_dtype(device_type)
        if wanted in (torch.float16, torch.bfloat16):
            return wanted
    return None


def _reference(query, key, value, offsets, scale: float) -> torch.Tensor:
    """The same rule as SDPA with a dense per-row mask: [B, H, L, D] inputs -> [B, L, H, D].

    Segments never cross rows, so the mask is [B, 1, L, L], as large as the dense packed mask of SDPA.
    """
    b, h, length, _ = query.shape
    pos = torch.arange(b * length, device=query.device)
    segment = torch.searchsorted(offsets[1:].to(torch.long), pos, right=True).view(b, length)  # [B, L]
    idx = torch.arange(length, device=query.device)
    mask = (segment[:, :, None] == segment[:, None, :]) & (idx[None, :] <= idx[:, None])  # [B, L, L]
    key, value = (x.repeat_interleave(h // x.shape[1], dim=1) for x in (key, value))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], scale=scale)  # [B, H, L, D]
    return out.transpose(1, 2)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function for transformers: query [B, H, L, D], key/value [B, H_kv, L, D] -> ([B, L, H, D], None)."""
    offsets = kwargs.get("cu_seq_lens_q")
    if offsets is None:
        raise ValueError(
            f"attn_implementation {NAME!r} needs the segment offsets of the rows (a models.attention layout's "
            "decoder_kwargs give them); for generation or a bare decoder use 'sdpa'"
        )
    if dropout:
        raise ValueError(f"attn_implementation {NAME!r} has no attention dropout; set attention_dropout=0")
    b, h, length, d = query.shape
    scale = scaling if scaling is not None else d**-0.5
    half = kernel_dtype(query.dtype, query.device.type) if query.is_cuda and kernel_available() else None
    if half is None:
        return _reference(query, key, value, offsets, scale), None
    q = query.transpose(1, 2).reshape(b * length, h, d).to(half)  # [T, H, D]
    k = key.transpose(1, 2).reshape(b * length, key.shape[1], d).to(half)  # [T, H_kv, D]
    v = value.transpose(1, 2).reshape(b * length, value.shape[1], d).to(half)
    out = _flash(q, k, v, offsets, int(kwargs.get("max_length_q") or length), scale)  # [T, H, D]
    return out.view(b, length, h, d), None


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
