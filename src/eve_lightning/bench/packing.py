"""Packing benchmark: share of real tokens in packed batches, first-fit rows against balanced rows.

Usage::

    python -m eve_lightning.bench.packing --shards data/demo/sft/val --task sft [--batch-size 64]
        [--pack-length 4096 8192] [--batches 8]

Packed rows are padded to the longest row of their batch, and every padded token costs the decoder's projections
and MLP as much as a real one. Both layouts hold the same samples in the same number of rows; the table gives the
real-token share (real tokens / row slots) of each, from the same batches of a shard folder. The last line printed
is JSON: ``{"<pack length>": {"first_fit": share, "balanced": share}}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from eve_lightning.data import collate
from eve_lightning.data.datamodule import EveDataModule


def real_token_share(shards: str, task: str, batch_size: int, pack_length: int, batches: int, balanced: bool) -> float:
    """Real tokens over row slots of the first ``batches`` packed batches of a shard folder (unshuffled)."""
    dm = EveDataModule(
        train_shards=shards,
        task=task,
        batch_size=batch_size,
        loader={"num_workers": 0, "pin_memory": False},
        stream={"shuffle": False, "resampled": False, "epoch_samples": batch_size * batches},
        packing={"collate": "packed", "pack_length": pack_length, "pad_to_multiple_of": 128},
    )
    stream = dm.train_stream()  # collates in this process (no workers)
    stream.collator.packer = collate.pack_balanced if balanced else collate.pack_first_fit
    real = slots = 0
    for i, batch in enumerate(stream):
        if i >= batches:
            break
        real += batch["meta"]["stats"]["real_tokens"]
        slots += batch["meta"]["stats"]["slot_tokens"]
    return real / slots if slots else 0.0


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.packing", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="shard folder (with index.json)")
    p.add_argument("--task", choices=["pretrain", "sft"], required=True)
    p.add_argument("--batch-size", type=int, default=64, help="samples per packed batch")
    p.add_argument("--pack-length", type=int, nargs="+", default=[4096, 8192], help="row budgets to compare")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args(argv)
    out = {}
    for length in args.pack_length:
        first, even = (
            real_token_share(args.shards, args.task, args.batch_size, length, args.batches, balanced)
            for balanced in (False, True)
        )
        out[str(length)] = {"first_fit": round(first, 4), "balanced": round(even, 4)}
        print(f"pack_length {length}: real-token share first-fit {first:.1%}, balanced {even:.1%}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
