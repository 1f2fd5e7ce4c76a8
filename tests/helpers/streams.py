"""Streams over shard folders, as the data tests build them."""

from __future__ import annotations

from eve_lightning.data.shards import resolve_shards
from eve_lightning.data.stream import SampleConfig, ShardStream


def sft_stream(folder, tok, rank, world, workers, **kw) -> ShardStream:
    """An exact (not resampled) vicuna_v1 stream of one rank over ``folder``; ``kw`` overrides its options."""
    opts = {"batch_size": 4, "resampled": False, "group_by_modality": True, "window": 2, "seed": 5}
    opts.update(kw)
    sample = SampleConfig("vicuna_v1", 672, opts.pop("max_length", 2048), teacher_view=False)
    shards = resolve_shards(str(folder), columns=True)
    return ShardStream(shards, tok, sample, rank=rank, world_size=world, num_workers=workers, **opts)
