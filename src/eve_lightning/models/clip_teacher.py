"""Frozen CLIP vision teacher: uint8 336-px views -> penultimate-layer patch features (CLS dropped).

Always in eval mode and without gradients, whatever `.train()` is called on the tree around it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from eve_lightning.models.patch_embedding import normalize_pixels


class ClipTeacher(nn.Module):
    """Wraps an HF CLIPVisionModel; returns hidden_states[select_layer] without the CLS token."""

    def __init__(self, clip: CLIPVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        self.clip = clip
        self.select_layer = select_layer
        self.clip.requires_grad_(False)
        self.clip.eval()

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    @property
    def grid(self) -> int:
        cfg = self.clip.config
        return cfg.image_size // cfg.patch_size

    def train(self, mode: bool = True) -> ClipTeacher:
        """Stay in eval mode: the teacher is never trained (dropout off, no statistics updates)."""
        del mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher features.

        Args:
            pixel_values: uint8 [N, 3, 336, 336] (or normalized floats).

        Returns:
            [N, grid*grid, C] patch features, row-major, detached.
        """
        x = pixel_values
        dtype = next(self.clip.parameters()).dtype
        x = normalize_pixels(x, dtype) if x.dtype == torch.uint8 else x.to(dtype)
        out = self.clip(pixel_values=x, output_hidden_states=True)
        return out.hidden_states[self.select_layer][:, 1:]  # [N, g*g, C]


def build_teacher(
    path: str | None = None, config: dict | None = None, select_layer: int = -2, dtype: str | None = None
) -> ClipTeacher:
    """Build the teacher from a local CLIP checkpoint folder, or with random weights from a config dict.

    Args:
        path: local folder of `openai/clip-vit-large-patch14-336` (vision or full CLIP checkpoint).
        config: CLIPVisionConfig keyword arguments (used when `path` is None; tests and debug runs).
        select_layer: hidden-state index to distil (-2 = penultimate encoder layer, before post-LN).
        dtype: optional torch dtype name to cast to (e.g. "bfloat16").
    """
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"teacher checkpoint folder {path!r} does not exist; set model.teacher.path to a local copy "
                "of clip-vit-large-patch14-336, or model.align_weight=0 to train without the teacher"
            )
        clip = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    elif config is not None:
        clip = CLIPVisionModel(CLIPVisionConfig(**config))
    else:
        raise ValueError("build_teacher needs a local `path` or a `config`")
    if dtype is not None:
        clip = clip.to(getattr(torch, dtype))
    return ClipTeacher(clip, select_layer=select_layer)
