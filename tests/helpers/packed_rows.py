"""Sample-id rows of packed samples, for the packed-attention tests."""

from __future__ import annotations

import torch


def packed_rows(lengths_per_row: list[list[int]], length: int) -> torch.Tensor:
    """[R, length] sample ids: row r holds samples of the given lengths in order, then padding (-1)."""
    seq = torch.full((len(lengths_per_row), length), -1, dtype=torch.long)
    for r, lengths in enumerate(lengths_per_row):
        pos = 0
        for s, n in enumerate(lengths):
            seq[r, pos : pos + n] = s
            pos += n
    return seq
