"""Weights-only reading of pickled checkpoint files: a file cannot run code, whoever wrote it.

Every `.ckpt`, `.pt` and `.bin` file eve_lightning reads goes through `safe_load`: `torch.load(weights_only=True)`,
whose unpickler builds tensors, containers and plain values only and refuses every other global. The few
DeepSpeed classes its checkpoint files hold (the ZeRO stage enum, the loss scaler, fragment addresses) are mapped
to inert stand-ins of our own, so DeepSpeed folders can be read (and checked) without DeepSpeed and without
trusting their pickles.

Errors: `UnsafeCheckpointError` (the file holds other objects: not loaded, nothing ran) and
`TornCheckpointError` (the file is cut short or not a checkpoint at all).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A pickled file references code beyond tensors and plain data; it was refused before anything ran."""


class TornCheckpointError(ValueError):
    """A checkpoint file that is incomplete (a write was cut off) or not a torch checkpoint."""


class DeepSpeedLossScaler:
    """Stand-in for DeepSpeed's loss scaler in its optimizer files: only its attributes are kept."""


class DeepSpeedFragmentAddress:
    """Stand-in for DeepSpeed's (numel, start) fragment address of a parameter in a flat partition."""


def deepspeed_zero_stage(value: int) -> int:
    """Stand-in for DeepSpeed's ZeRO stage enum: its integer value."""
    return int(value)


# (stand-in, the name the pickle refers to): the unpickler resolves these names to our inert objects.
DEEPSPEED_STAND_INS = [
    (deepspeed_zero_stage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (DeepSpeedLossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (DeepSpeedLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (DeepSpeedFragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
]


def _refused_what(err: BaseException) -> str:
    """The object the weights-only unpickler refused, from its message (its wording varies across torch versions)."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it refers to {match.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Check the doc")]
    return lines[-1][:200] if lines else type(err).__name__


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load` with weights-only unpickling (and the DeepSpeed stand-ins).

    Args:
        path: a torch checkpoint file (`.ckpt`, `.pt`, `.bin`).
        map_location: where tensors go (default CPU).
        mmap: map the tensor storage instead of reading it (cheap validation of large files).

    Raises:
        UnsafeCheckpointError: the file holds objects other than tensors and plain data (nothing of it ran).
        TornCheckpointError: the file is cut short or is not a torch checkpoint.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(DEEPSPEED_STAND_INS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # no object was refused: the bytes are not a pickle (garbage, cut short)
            raise TornCheckpointError(
                f"{path} is incomplete or not a torch checkpoint ({_refused_what(err)})"
            ) from None
        raise UnsafeCheckpointError(
            f"{path} was not loaded: it holds pickled objects beyond tensors and plain data ({_refused_what(err)}), "
            "which could run code. eve_lightning reads weights-only checkpoints; convert the weights to "
            "safetensors on a machine you trust, or use the run's stage export (<run dir>/export)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        what = (str(err).splitlines() or [f"{type(err).__name__}: the file ends early"])[0][:160]
        raise TornCheckpointError(f"{path} is incomplete or not a torch checkpoint ({what})") from None


def check_loadable(path: str | Path) -> None:
    """Prove that a checkpoint file loads weights-only (its storages are mapped, not read), or raise as `safe_load`.

    Used before a file is handed to code that unpickles it itself (Lightning's FSDP loader, DeepSpeed's engine):
    a pickle that passes here references no global beyond tensors, plain data and the DeepSpeed data classes
    above, so no other unpickler can run code from it either.
    """
    try:
        safe_load(path, mmap=True)
    except TornCheckpointError:
        safe_load(path)  # files of the legacy (non-zip) format cannot be mapped: read them
