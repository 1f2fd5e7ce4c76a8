"""Writing into a model whose weights DeepSpeed ZeRO-3 has partitioned.

Under ZeRO-3, Lightning builds the model (``configure_model``) inside ``deepspeed.zero.Init``: every parameter is
cut across the ranks at construction and holds an empty placeholder where its values were: ``load_state_dict``
of ``init_from`` fails on a size mismatch, and the EVEv2 copy step's ``copy_`` between placeholders changes
nothing and says nothing. ``writable_weights`` gathers the parameters first and partitions the written values
again on the way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def is_partitioned(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ZeRO-3 partition (DeepSpeed marks them with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def writable_weights(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s parameters hold their whole values and writes to them stay.

    Partitioned parameters are gathered on every rank (a collective: every rank must enter) and, on exit, rank 0's
    values are partitioned again, so every rank must write the same values (each loads the same file). Memory:
    the whole model on every rank for the duration. A model that is not partitioned is left as it is.
    """
    if not is_partitioned(model):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        yield
