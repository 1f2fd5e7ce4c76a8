"""EVE data pipeline: shards, preprocessing, chat templates, collation and streaming DataModules.

Public names are imported lazily (``from eve_lightning.data import EveDataModule``), so command-line tools such as
``python -m eve_lightning.data.make_shards`` start without importing Lightning.

Modules: ``geometry`` (band placement, EVEv2's resize rule, token counts), ``image`` (uint8 views and masks),
``tokenizer`` (local tokenizer loading), ``conversation`` / ``templates`` / ``encoding`` (turns -> ids and exact
labels), ``collate`` (padded and packed batches), ``shards`` (safe tar reading, index), ``records`` /
``make_shards`` (shard writer), ``demo`` (procedural demo set), ``plan`` (rank/worker split, grouping), ``stream``
(IterableDataset), ``datamodule`` (LightningDataModule).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EveDataModule": "datamodule",
    "ShardStream": "stream",
    "SampleConfig": "stream",
    "SampleProcessor": "stream",
    "PaddedCollator": "collate",
    "PackedCollator": "collate",
    "ProcessedSample": "collate",
    "band_geometry": "geometry",
    "evev2_geometry": "geometry",
    "image_token_count": "geometry",
    "prepare_image": "image",
    "prepare_image_evev2": "image",
    "eve_view": "image",
    "evev2_view": "image",
    "teacher_view": "image",
    "to_rgb": "image",
    "load_tokenizer": "tokenizer",
    "default_tokenizer_path": "tokenizer",
    "get_template": "templates",
    "register_template": "templates",
    "encode_parts": "encoding",
    "fit_length": "encoding",
    "normalize_conversation": "conversation",
    "build_shards": "make_shards",
    "resolve_shards": "shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
