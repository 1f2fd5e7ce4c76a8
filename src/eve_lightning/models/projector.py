"""Projector: PEL width (1024) -> LLM width, EVE's `mlp2x_gelu` (Linear, exact GELU, Linear)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Two-layer MLP with an exact (erf) GELU between, biases on both layers."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp2x_gelu") -> None:
        super().__init__()
        if kind != "mlp2x_gelu":
            raise ValueError(f"unknown projector type {kind!r}; EVE uses 'mlp2x_gelu'")
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim]."""
        return self.fc2(self.act(self.fc1(x)))
