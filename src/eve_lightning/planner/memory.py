"""Per-GPU memory model of an EVE training step: model states by sharding strategy, activations by tokens.

Model states (Rajbhandari et al., ZeRO): a trained parameter holds its weight (2 bytes in bf16, 4 in float32), its
gradient (same dtype), Adam's two moments (8 bytes) and, when the weights are not float32, a float32 master copy
(4 bytes). Frozen parameters hold only their weight. Sharding divides by the data-parallel size ``n``:

    strategy          weights   gradients   optimizer
    ddp / auto        1         1           1
    deepspeed_zero2   1         1/n         1/n
    deepspeed_zero3   1/n       1/n         1/n        (+ the gathered layers in flight)
    fsdp (FULL_SHARD) 1/n       1/n         1/n        (+ the gathered layers in flight)

Activations saved for backward, per token and decoder layer (hidden ``h``, KV width ``kv``, MLP width ``i``,
bf16 compute, float32 residual stream; counted from the tensors HF's LLaMA layer keeps):

    trained decoder:  30 h + 4 kv + 8 i bytes   (RMSNorm inputs and outputs in float32, the bf16 inputs of the 7
                                                 projections, q/k/v/out of attention, the SwiGLU intermediates)
    frozen decoder:   12 h + 4 kv + 6 i bytes   (no weight gradients: the projections' inputs are not kept)

times an empirical factor for what that count misses (allocator rounding, autocast copies, hooks, temporaries at
the forward/backward turn): ``ALPHA_TRAINED`` and ``ALPHA_FROZEN``, calibrated on one H100 measurement each
(``benchmarks/results``: eve_1b pretrain and eve_7b prealign, micro-batch 8) and checked against the others in
``tests/planner/test_planner_memory.py``. Compiled decoder blocks (``compile.enabled``) keep far less: inductor
recomputes the cheap elementwise results in the backward instead of saving them. They have their own factors,
``ALPHA_TRAINED_COMPILED`` and ``ALPHA_FROZEN_COMPILED``, calibrated on compiled H100 runs with balanced rows
(eve_1b pretrain micro-batch 32, eve_7b prealign micro-batch 12). With activation checkpointing each checkpointed
layer keeps only its input (``residual_bytes x h`` per token) and one layer's activations are alive during
recomputation; with only the first N of L layers checkpointed (selective), the other L - N keep their full
activations, and the recomputation starts only after the backward has freed those. The calibration runs had
float32 weights; bf16-weight plans (EVE-7B) reuse the factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
ALPHA_TRAINED = 1.66  # measured / counted activation bytes, eve_1b pretrain (H100, flex attention, no checkpointing)
ALPHA_FROZEN = 1.15  # the same for a frozen decoder, eve_7b prealign micro-batch 8
ALPHA_TRAINED_COMPILED = 0.57  # compiled blocks: eve_1b pretrain, micro-batch 32, balanced rows, torch_varlen
ALPHA_FROZEN_COMPILED = 0.81  # compiled blocks, frozen decoder: eve_7b prealign, micro-batch 12, torch_varlen
GATHERED_LAYERS = 2  # ZeRO-3 / FSDP: decoder layers whose full weights are gathered at a time (current + prefetch)
PEL_BYTES_PER_PATCH_WIDTH = 24  # patch embedding activations per 14-px patch and PEL channel (bf16, ~12 tensors)
SHARDED = {"ddp": (1, 1, 1), "deepspeed_zero2": (1, 0, 0), "deepspeed_zero3": (0, 0, 0), "fsdp": (0, 0, 0)}


@dataclass(frozen=True)
class DecoderShape:
    """What the activation count needs of the decoder."""

    hidden: int
    kv_width: int
    intermediate: int
    layers: int

    @classmethod
    def from_hf(cls, config: Any) -> DecoderShape:
        """From a transformers decoder config (LLaMA family)."""
        head_dim = config.hidden_size // config.num_attention_heads
        kv = config.num_key_value_heads * head_dim
        return cls(config.hidden_size, kv, config.intermediate_size, config.num_hidden_layers)

    def bytes_per_token_layer(self, trained: bool, compiled: bool = False) -> float:
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        if trained:
            return (ALPHA_TRAINED_COMPILED if compiled else ALPHA_TRAINED) * (30 * h + 4 * kv + 8 * i)
        return (ALPHA_FROZEN_COMPILED if compiled else ALPHA_FROZEN) * (12 * h + 4 * kv + 6 * i)


@dataclass(frozen=True)
class Workload:
    """One micro-batch on one GPU."""

    micro_batch: int
    tokens_per_sample: float  # expanded tokens (image tokens + text)
    images_per_sample: float  # share of samples with an image (SFT ~0.95)
    patches_per_image: int  # 14-px patches of the PEL canvas (2304 at 672 px)
    image_tokens_per_image: int  # decoder tokens of one image (601 at 672 px, square)
    vision_width: int = 1024  # PEL channels
    checkpointing: bool = False
    checkpoint_layers: int | None = None  # with checkpointing: the first N decoder layers only (None: all)
    compiled: bool = False  # compiled decoder blocks (their own activation factors)

    def checkpointed(self, layers: int) -> int:
        """How many of ``layers`` decoder layers are checkpointed."""
        if not self.checkpointing:
            return 0
        return layers if self.checkpoint_layers is None else max(0, min(self.checkpoint_layers, layers))

    @property
    def tokens(self) -> float:
        return self.micro_batch * self.tokens_per_sample


@dataclass
class MemoryPlan:
    """Bytes per GPU by component (``total`` sums them)."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 2) for k, v in {**self.parts, "total": self.total}.items()}


def model_states(
    trained: int,
    frozen: int,
    *,
    weight_bytes: int,
    frozen_weight_bytes: int,
    strategy: str,
    n_gpus: int,
    gathered: float = 0.0,
    autocast_copies: bool = False,
) -> dict[str, float]:
    """Weights, gradients and optimizer states per GPU (bytes).

    Args:
        trained: trained parameters.
        frozen: frozen parameters (the decoder in prealign, the teacher).
        weight_bytes: bytes per trained weight (2 for bf16, 4 for float32); gradients have the same dtype.
        frozen_weight_bytes: bytes per frozen weight.
        strategy: ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp.
        n_gpus: data-parallel size.
        gathered: parameters gathered in full at a time under ZeRO-3 / FSDP.
        autocast_copies: float32 trained weights run under bf16 autocast, which keeps a bf16 copy of each
            (Lightning's ``bf16-mixed`` with float32 weights).
    """
    if strategy not in SHARDED:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {sorted(SHARDED)}")
    full_w, full_g, full_o = SHARDED[strategy]
    share = lambda full: 1.0 if full else 1.0 / n_gpus  # noqa: E731
    optimizer = 8 + (4 if weight_bytes < 4 else 0)
    parts = {
        "weights (trained)": trained * weight_bytes * share(full_w),
        "weights (frozen)": frozen * frozen_weight_bytes * share(full_w),
        "gradients": trained * weight_bytes * share(full_g),
        "optimizer states": trained * optimizer * share(full_o),
    }
    if autocast_copies and weight_bytes == 4:
        parts["bf16 autocast copies"] = trained * 2 * share(full_w)
    if not full_w and n_gpus > 1:
        parts["gathered layers (in flight)"] = gathered * weight_bytes
    return parts


def activations(
    shape: DecoderShape, work: Workload, *, trained: bool, align_layers: int, residual_bytes: int = 4
) -> dict[str, float]:
    """Activation bytes per GPU for one micro-batch (see the module docstring).

    ``residual_bytes``: bytes per element of the residual stream (the weights' dtype: 4 for float32 weights under
    autocast, 2 for bf16 weights); it sizes the checkpointed layer inputs and the aligner's captured states.
    """
    per_layer = shape.bytes_per_token_layer(trained, work.compiled) * work.tokens
    n = work.checkpointed(shape.layers)
    kept = shape.layers - n if n < shape.layers else 1  # all checkpointed: one layer recomputing at a time
    decoder = n * work.tokens * residual_bytes * shape.hidden + kept * per_layer
    images = work.micro_batch * work.images_per_sample
    pel = images * work.patches_per_image * PEL_BYTES_PER_PATCH_WIDTH * work.vision_width
    return {
        "activations (decoder)": decoder,
        "activations (patch embedding)": pel,
        "aligner hidden states": align_layers * images * work.image_tokens_per_image * shape.hidden * residual_bytes,
    }
