"""The decoder's attention backend, and the attention inputs of padded and packed rows.

Everything that depends on which attention kernel the decoder runs is decided here, once:

* the backend names a config may give (``model.llm.attn_implementation``), checked with an error that lists them;
* what transformers gets as its ``attn_implementation`` (``torch_varlen`` is registered with it on first use; its
  kernel adapter is ``models.varlen_attention``);
* which backend a decoder runs now (``backend_of``), switching it (``set_backend``), and the backend of KV-cache
  generation (``generation_backend``: the packed-row training kernels give way to SDPA, and come back on exit);
* the keyword arguments of one decoder forward for a batch: rows of one sample each (``PaddedLayout``) or several
  samples per row (``PackedLayout``) become a padding mask, a FlexAttention block mask, a dense block-diagonal
  mask or ``torch_varlen`` segment offsets (``layout.decoder_kwargs(backend)``).

Nothing here knows a particular VLM: any HF decoder whose attention layers go through transformers' attention
interface (LLaMA, Qwen2) takes these keyword arguments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from eve_lightning.models import varlen_attention
from eve_lightning.models.block_mask import packed_block_mask

SDPA = "sdpa"  # torch's scaled_dot_product_attention; packed rows get a dense block-diagonal mask
EAGER = "eager"  # transformers' matmul-softmax reference; packed rows get the same mask as additive float
FLEX = "flex_attention"  # FlexAttention; packed rows get a sparse block mask (training only)
VARLEN = varlen_attention.NAME  # torch's variable-length flash kernel over segment offsets (training only)
FLASH2 = "flash_attention_2"  # the flash-attn package; packed rows are delimited by their restarting position ids
BACKENDS = (SDPA, EAGER, FLEX, VARLEN, FLASH2)
DEFAULT = SDPA
CONFIG_KEY = "model.llm.attn_implementation"  # where a training config names the backend
# Kernels written for the training's packed rows: KV-cache decoding runs SDPA instead (``generation_backend``).
TRAINING_ONLY = frozenset({FLEX, VARLEN})


def validate(name: str) -> str:
    """Return ``name`` if it is a known backend.

    Raises:
        ValueError: naming the wrong value, the choices and the config key to set.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: set {CONFIG_KEY} to one of {', '.join(BACKENDS)}")
    return name


def hf_implementation(name: str) -> str:
    """The ``attn_implementation`` transformers gets for backend ``name`` (``torch_varlen`` registered first)."""
    validate(name)
    if name == VARLEN:
        varlen_attention.register()
    return name


def load_kwargs(name: str) -> dict[str, str]:
    """Keyword arguments of ``from_pretrained`` that select backend ``name``."""
    return {"attn_implementation": hf_implementation(name)}


def configure(config: Any, name: str) -> None:
    """Make an HF model config select backend ``name`` (before the model is built from it, or after).

    The value is set as it is, without transformers' availability checks, so a model can be built on a machine
    that cannot run the kernel (the planner's meta-device models, CPU tests of a GPU configuration).
    """
    config._attn_implementation = hf_implementation(name)


def set_backend(model: torch.nn.Module, name: str) -> None:
    """Switch a built HF model (its config) to backend ``name``; the next forward uses it."""
    configure(model.config, name)


def backend_of(model: Any) -> str:
    """The backend an HF model (or an HF config) runs now; SDPA when the config names none."""
    config = getattr(model, "config", model)
    return getattr(config, "_attn_implementation", None) or DEFAULT


def generation_name(name: str) -> str:
    """The backend KV-cache decoding runs for a model trained with ``name``: SDPA for the training-only kernels."""
    return SDPA if name in TRAINING_ONLY else name


def bare_decoder_name(name: str) -> str:
    """The backend for calling the decoder without a layout's keyword arguments (a plain HF forward).

    ``torch_varlen`` cannot run without segment offsets, so it gives way to SDPA; the other backends build their
    own mask from a padding mask.
    """
    return SDPA if name == VARLEN else name


@contextlib.contextmanager
def generation_backend(model: torch.nn.Module) -> Iterator[str]:
    """Inside, ``model`` runs the generation backend (``generation_name``); its own comes back on exit, errors too.

    Yields:
        The backend in use inside.
    """
    current = backend_of(model)
    inside = generation_name(current)
    if inside == current:
        yield current
        return
    set_backend(model, inside)
    try:
        yield inside
    finally:
        configure(model.config, current)  # the training backend again


def fastest_packed_backend() -> str:
    """The fastest packed-row backend this machine has: ``flash_attention_2`` with flash-attn installed, else flex."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return FLEX
    return FLASH2


def block_diagonal_mask(seq_ids: torch.Tensor) -> torch.Tensor:
    """Dense mask of packed rows: a token attends to earlier tokens of its own sample, padding to itself only.

    Args:
        seq_ids: [B, L] sample id of every token, -1 on padding.

    Returns:
        bool [B, 1, L, L] (True: attend); no query row is empty.
    """
    length = seq_ids.shape[1]
    idx = torch.arange(length, device=seq_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [L, L] key <= query
    same = (seq_ids[:, :, None] == seq_ids[:, None, :]) & (seq_ids[:, None, :] >= 0)  # [B, L, L]
    return ((same & causal) | torch.eye(length, dtype=torch.bool, device=seq_ids.device))[:, None]


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as the float32 bias transformers' eager attention adds to its logits: 0 or the float32 minimum.

    Eager attention adds a 4D mask it is given as it is, so a bool mask would add 1 and 0 instead of masking.
    """
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
        ~mask, torch.finfo(torch.float32).min
    )


@dataclass(frozen=True)
class PaddedLayout:
    """Rows of one sample each, padded on either side; the decoder adds causality to the padding mask.

    Attributes:
        attention_mask: bool [B, L], True on real tokens.
        position_ids: [B, L], 0 at each row's first real token.
    """

    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def seq_ids(self) -> torch.Tensor:
        """[B, L] sample id of every token: 0 on the row's real tokens, -1 on padding."""
        return torch.where(self.attention_mask.bool(), 0, -1)

    def decoder_kwargs(self, backend: str) -> dict[str, Any]:
        """Attention keyword arguments of the decoder's forward for these rows under ``backend``.

        Every backend gets the padding mask; ``torch_varlen`` also gets segment offsets (one sample per row).
        """
        kwargs: dict[str, Any] = {"attention_mask": self.attention_mask, "position_ids": self.position_ids}
        if validate(backend) == VARLEN:
            kwargs |= varlen_attention.decoder_kwargs(self.seq_ids)
        return kwargs


@dataclass(frozen=True)
class PackedLayout:
    """Several samples per row; attention stays inside each sample.

    Attributes:
        seq_ids: [B, L] sample index of every token within its row, -1 on padding.
        position_ids: [B, L], restarting at 0 for every sample.
    """

    seq_ids: torch.Tensor
    position_ids: torch.Tensor

    @property
    def attention_mask(self) -> torch.Tensor:
        """The [B, L] bool padding mask: True on real tokens."""
        return self.seq_ids >= 0

    def decoder_kwargs(self, backend: str) -> dict[str, Any]:
        """Attention keyword arguments of the decoder's forward for these rows under ``backend``.

        flash-attention: no mask (the restarting position ids delimit the samples); ``torch_varlen``: no mask,
        segment offsets instead; FlexAttention: a sparse block mask of the same rule, so that only the blocks on
        each sample's diagonal are computed; SDPA: the dense block-diagonal causal mask; eager: the same mask as
        an additive float32 bias. The segment offsets read one count back from the device, so call this before
        the decoder is queued.
        """
        kwargs: dict[str, Any] = {"position_ids": self.position_ids}
        backend = validate(backend)
        if backend == FLASH2:
            kwargs["attention_mask"] = None
        elif backend == VARLEN:
            kwargs["attention_mask"] = None
            kwargs |= varlen_attention.decoder_kwargs(self.seq_ids)
        elif backend == FLEX:
            kwargs["attention_mask"] = packed_block_mask(self.seq_ids)
        elif backend == EAGER:
            kwargs["attention_mask"] = additive_mask(block_diagonal_mask(self.seq_ids))
        else:
            kwargs["attention_mask"] = block_diagonal_mask(self.seq_ids)
        return kwargs


Layout = PaddedLayout | PackedLayout


class LayoutViews:
    """The rows' padding mask, positions and sample ids read from a ``layout`` attribute (a Padded/PackedLayout).

    Mixed into the decoder-input records of both model families, so readers keep ``mm.attention_mask`` etc.
    """

    layout: Layout

    @property
    def attention_mask(self) -> torch.Tensor:
        """The [B, L'] bool padding mask: True on real tokens."""
        return self.layout.attention_mask

    @property
    def position_ids(self) -> torch.Tensor:
        """[B, L'] decoder positions (restarting per sample in packed rows)."""
        return self.layout.position_ids

    @property
    def seq_ids(self) -> torch.Tensor | None:
        """Packed rows: [B, L'] sample index of every token within its row (-1 on padding); None when padded."""
        return self.layout.seq_ids if isinstance(self.layout, PackedLayout) else None
