"""Patch Aligning Layer (PAL): LLM hidden states at image cells -> predicted teacher (CLIP) patch features.

Training only (spec section 1.3). Reads the hidden states of every `layer_interval`-th LLM layer counted from
the top (index L = final-norm output, ..., 0 = input embeddings), average-pools them onto the teacher's grid
(2x2 for 1344-px inputs), maps each layer with its own LayerNorm+Linear, fuses the layers with a cross-attention
whose query is the top layer, and adds a linear read-out of the top layer.
"""

from __future__ import annotations

import torch
from torch import nn


def aligner_layer_indices(num_layers: int, interval: int = 4) -> list[int]:
    """Hidden-state indices the aligner reads, top first: [L, L-k, ..., >= 0].

    Args:
        num_layers: decoder depth L (hidden-state indices run 0..L).
        interval: k, EVE uses 4 (9 indices for a 32-layer LLM).
    """
    if interval < 1:
        raise ValueError("aligner layer interval must be >= 1")
    return list(range(num_layers, -1, -interval))


class PatchAligner(nn.Module):
    """Layer-wise cross-attention read-out of LLM hidden states into the teacher's feature space."""

    def __init__(
        self,
        llm_hidden: int,
        teacher_hidden: int,
        num_llm_layers: int,
        layer_interval: int = 4,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        if teacher_hidden % num_heads:
            raise ValueError(f"teacher width {teacher_hidden} is not divisible by {num_heads} heads")
        self.layer_indices = aligner_layer_indices(num_llm_layers, layer_interval)
        if len(self.layer_indices) < 2:
            raise ValueError(
                f"the aligner needs at least two layers; a {num_llm_layers}-layer LLM with interval "
                f"{layer_interval} gives {self.layer_indices}. Lower model.align_layer_interval."
            )
        self.num_heads = num_heads
        self.scale = teacher_hidden**-0.5
        self.layer_norms = nn.ModuleList(nn.LayerNorm(llm_hidden) for _ in self.layer_indices)
        self.layer_projs = nn.ModuleList(nn.Linear(llm_hidden, teacher_hidden, bias=False) for _ in self.layer_indices)
        self.top_proj = nn.Linear(llm_hidden, teacher_hidden)
        self.fused_proj = nn.Linear(teacher_hidden, teacher_hidden)

    @staticmethod
    def group_cells(target_cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[M] teacher cell ids -> (cells [P] distinct ids, sorted; inverse [M] index of each id in `cells`)."""
        return torch.unique(target_cell, sorted=True, return_inverse=True)

    def forward(
        self,
        layers: list[torch.Tensor],
        target_cell: torch.Tensor,
        groups: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict teacher features.

        Args:
            layers: one [M, H] tensor per entry of `layer_indices` (same order): hidden states at M image
                cells of the LLM token grid.
            target_cell: [M] id of the teacher cell each LLM cell falls in (image * 576 + row * 24 + col);
                cells sharing an id are averaged (2x2 pooling at 1344 px).
            groups: `group_cells(target_cell)` when already known (it reads a count back from the device).

        Returns:
            (pred [P, C], cells [P]): predictions for the P distinct teacher cells, sorted by id.
        """
        cells, inverse = groups if groups is not None else self.group_cells(target_cell)  # [P], [M]
        p = cells.shape[0]
        counts = torch.zeros(p, device=target_cell.device, dtype=layers[0].dtype)
        counts = counts.index_add(0, inverse, torch.ones_like(inverse, dtype=counts.dtype))[:, None]  # [P, 1]
        pooled = [h.new_zeros(p, h.shape[-1]).index_add(0, inverse, h) / counts for h in layers]  # J x [P, H]
        feats = torch.stack(
            [proj(norm(h)) for h, norm, proj in zip(pooled, self.layer_norms, self.layer_projs)], dim=1
        )  # [P, J, C]
        heads = feats.unflatten(-1, (self.num_heads, -1))  # [P, J, heads, C/heads]
        q, kv = heads[:, 0], heads[:, 1:]  # [P, heads, c], [P, J-1, heads, c]
        # J-1 keys per query: broadcast products, not batched matrix products of tiny tiles
        attn = ((q[:, None] * kv).sum(-1) * self.scale).softmax(1)  # [P, J-1, heads]
        fused = (attn[..., None] * kv).sum(1).flatten(1)  # [P, C]
        pred = self.top_proj(pooled[0]) + self.fused_proj(fused)  # [P, C]
        return pred, cells
