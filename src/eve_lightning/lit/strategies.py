"""Strategy factories for what Hydra cannot express directly (sets of classes, DeepSpeed-aware HF loading)."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from lightning.pytorch.strategies import FSDPStrategy


def fsdp_strategy(wrap_layers: list[str], checkpoint_layers: bool = False, **kwargs: Any) -> FSDPStrategy:
    """FSDPStrategy wrapping (and optionally activation-checkpointing) the named layer classes.

    Args:
        wrap_layers: import paths of the module classes that become FSDP units (e.g. the decoder layer).
        checkpoint_layers: also recompute those layers' activations in backward.
        **kwargs: other FSDPStrategy / FullyShardedDataParallel arguments.
    """
    classes = {get_class(path) for path in wrap_layers}
    if checkpoint_layers:
        kwargs["activation_checkpointing_policy"] = classes
    return FSDPStrategy(auto_wrap_policy=classes, **kwargs)
