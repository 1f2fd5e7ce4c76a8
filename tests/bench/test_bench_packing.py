"""bench.packing: balanced rows carry at least the real-token share of first-fit rows, on real demo shards."""

from __future__ import annotations

from eve_lightning.bench import packing


def test_balanced_rows_waste_less_than_first_fit(demo_dir):
    out = packing.main(["--shards", str(demo_dir / "pretrain" / "train"), "--task", "pretrain", "--batch-size", "12",
                        "--pack-length", "2048", "--batches", "2"])  # fmt: skip
    shares = out["2048"]
    assert 0 < shares["first_fit"] <= shares["balanced"] <= 1
