"""FP8 training of the decoder's linear layers (torchao's float8 recipes, on GPUs with FP8 tensor cores).

``model.fp8: tensorwise`` (or ``rowwise``) swaps the ``nn.Linear`` layers of the decoder blocks (attention
projections and MLP) for torchao's ``Float8Linear``: inputs, weights and output gradients are scaled to float8
per tensor (or per row) for each matmul, the weights stay in their own dtype (the optimizer's master copy is
untouched). The LM head, the embeddings, the patch embedding, the aligner and the frozen teacher keep bf16/fp32.
Layers whose widths are not multiples of 16 (the FP8 kernels' requirement) are left as they are.

Tensorwise scaling takes the largest magnitude of each tensor it casts. Inside a compiled block, Inductor fuses that
reduction into the kernel producing the tensor; for the MLP's SwiGLU backward (two [tokens, intermediate] outputs)
the fused kernel ran 4x slower than the same pointwise kernel without the reduction (1.9 against 0.48 ms per call
on an H100, EVE-7B prealignment: 15 % of the FP8 step in such kernels). ``amax="separate"`` (the default) computes
the largest magnitude as an opaque operator of its own, one read of the tensor that nothing fuses into
(``abs_max``); ``amax="fused"`` leaves torchao's own reduction to the compiler.

FP8 matmuls need compute capability 8.9 or newer (H100, H200, L40S, RTX 4090); anywhere else the switch is refused
with an error naming the card, instead of falling back silently (a run asked to be FP8 would otherwise report
bf16 figures as FP8 ones).
"""

from __future__ import annotations

import torch
from torch import nn

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
AMAX_MODES = ("separate", "fused")
FP8_ROW_MULTIPLE = 16  # the FP8 matmuls take token counts in whole blocks of 16 (the weight gradient's inner size)
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Fp8Unavailable(RuntimeError):
    """FP8 was asked for where it cannot run (no CUDA, an older GPU, no torchao)."""


def check_fp8_device(device: torch.device | None = None) -> None:
    """Raise ``Fp8Unavailable`` unless ``device`` (default: the current CUDA device) has FP8 tensor cores."""
    if not torch.cuda.is_available():
        raise Fp8Unavailable(
            "model.fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability >= 8.9: H100, H200, L40S); "
            "no CUDA device here: set model.fp8=null"
        )
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 9):
        raise Fp8Unavailable(
            f"model.fp8 needs compute capability >= 8.9 (H100, H200, L40S); {torch.cuda.get_device_name(index)} has "
            f"{major}.{minor}: set model.fp8=null"
        )


def is_decoder_linear(module: nn.Module, name: str) -> bool:
    """Linear layers FP8 applies to: the decoder blocks' projections whose widths are multiples of 16."""
    if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in DECODER_LINEARS:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


@torch.library.custom_op("eve_lightning::abs_max", mutates_args=())
def abs_max(x: torch.Tensor) -> torch.Tensor:
    """Largest magnitude over all elements of ``x`` as a float32 scalar, in one reduction kernel of its own.

    A custom operator is opaque to the compiler, so the reduction is never fused into the kernel that produces
    ``x`` (see the module docstring); ``vector_norm`` of order infinity reads ``x`` once.
    """
    return torch.linalg.vector_norm(x, float("inf"), dtype=torch.float32)


@abs_max.register_fake
def _abs_max_fake(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((), dtype=torch.float32)


_TORCHAO_AMAX = "_eve_lightning_torchao_tensor_to_amax"  # where torchao's own function is kept while replaced


def use_separate_amax(separate: bool) -> None:
    """Make torchao's tensorwise scales take their amax from ``abs_max`` (True) or from its own reduction (False).

    torchao looks ``tensor_to_amax`` up in its ``float8_utils`` module at every cast, so the choice holds for the
    whole process (every Float8Linear), from the next compilation on. Axiswise (rowwise) scales, and amaxes reduced
    over ranks, keep torchao's function. Its own function is kept on the module while replaced and put back as it
    was (with its ``no_grad`` decorator) by ``use_separate_amax(False)``.
    """
    from torchao.float8 import float8_utils

    original = getattr(float8_utils, _TORCHAO_AMAX, float8_utils.tensor_to_amax)
    if not separate:
        float8_utils.tensor_to_amax = original
        if hasattr(float8_utils, _TORCHAO_AMAX):
            delattr(float8_utils, _TORCHAO_AMAX)
        return
    setattr(float8_utils, _TORCHAO_AMAX, original)
    tensorwise = float8_utils.ScalingGranularity.TENSORWISE

    @torch.no_grad()
    def tensor_to_amax(x, reduce_amax=False, device_mesh=None, scaling_granularity=tensorwise, axiswise_dim=None):
        if scaling_granularity is tensorwise and not (reduce_amax and torch.distributed.is_initialized()):
            return abs_max(x)  # a distributed amax keeps torchao's own path (it all-reduces the result)
        return original(x, reduce_amax, device_mesh, scaling_granularity, axiswise_dim)

    float8_utils.tensor_to_amax = tensor_to_amax


def convert_decoder_to_fp8(llm: nn.Module, recipe: str = "tensorwise", amax: str = "separate") -> int:
    """Swap the decoder blocks' linear layers of ``llm`` for torchao ``Float8Linear`` in place; returns how many.

    Call before ``torch.compile`` and before the optimizer is built (the weights stay the same parameters).
    ``amax``: how tensorwise scales find each tensor's largest magnitude (``AMAX_MODES``, module docstring).

    Raises:
        ValueError: an unknown recipe or amax mode.
        Fp8Unavailable: no FP8-capable GPU, or torchao missing.
    """
    if recipe not in RECIPES:
        raise ValueError(f"model.fp8={recipe!r} is not a float8 recipe: use one of {', '.join(RECIPES)} (or null)")
    if amax not in AMAX_MODES:
        raise ValueError(
            f"fp8 amax={amax!r}: use one of {', '.join(AMAX_MODES)} (convert_decoder_to_fp8's amax; bench.train "
            "--fp8-amax)"
        )
    check_fp8_device()
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise Fp8Unavailable(
            "model.fp8 needs the torchao package (pip install torchao), or set model.fp8=null"
        ) from err
    use_separate_amax(amax == "separate")
    names = [name for name, module in llm.named_modules() if is_decoder_linear(module, name)]
    wanted = set(names)
    convert_to_float8_training(
        llm,
        config=Float8LinearConfig.from_recipe_name(recipe),
        module_filter_fn=lambda module, fqn: fqn in wanted,
    )
    return len(names)
