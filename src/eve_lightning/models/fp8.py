"""FP8 training of the decoder's linear layers (torchao's float8 recipes, on GPUs with FP8 tensor cores).

``model.fp8: tensorwise`` (or ``rowwise``) swaps the ``nn.Linear`` layers of the decoder blocks (attention
projections and MLP) for torchao's ``Float8Linear``: inputs, weights and output gradients are scaled to float8
per tensor (or per row) for each matmul, the weights stay in their own dtype (the optimizer's master copy is
untouched). The LM head, the embeddings, the patch embedding, the aligner and the frozen teacher keep bf16/fp32.
Layers whose widths are not multiples of 16 (the FP8 kernels' requirement) are left as they are.

FP8 matmuls need compute capability 8.9 or newer (H100, H200, L40S, RTX 4090); anywhere else the switch is refused
with an error naming the card, instead of falling back silently (a run asked to be FP8 would otherwise report
bf16 figures as FP8 ones).
"""

from __future__ import annotations

import torch
from torch import nn

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
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


def convert_decoder_to_fp8(llm: nn.Module, recipe: str = "tensorwise") -> int:
    """Swap the decoder blocks' linear layers of ``llm`` for torchao ``Float8Linear`` in place; returns how many.

    Call before ``torch.compile`` and before the optimizer is built (the weights stay the same parameters).

    Raises:
        ValueError: an unknown recipe.
        Fp8Unavailable: no FP8-capable GPU, or torchao missing.
    """
    if recipe not in RECIPES:
        raise ValueError(f"model.fp8={recipe!r} is not a float8 recipe: use one of {', '.join(RECIPES)} (or null)")
    check_fp8_device()
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise Fp8Unavailable(
            "model.fp8 needs the torchao package (pip install torchao), or set model.fp8=null"
        ) from err
    names = [name for name, module in llm.named_modules() if is_decoder_linear(module, name)]
    wanted = set(names)
    convert_to_float8_training(
        llm,
        config=Float8LinearConfig.from_recipe_name(recipe),
        module_filter_fn=lambda module, fqn: fqn in wanted,
    )
    return len(names)
