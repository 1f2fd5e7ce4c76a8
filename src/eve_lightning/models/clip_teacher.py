"""Frozen CLIP vision teacher: uint8 336-px views -> patch features of one encoder layer (CLS dropped).

Always in eval mode and without gradients, whatever `.train()` is called on the tree around it. Only the encoder
layers up to the distilled one are kept and run (the penultimate layer: 23 of CLIP ViT-L's 24): the layers above it
would be computed and thrown away. Loading a full CLIP state dict drops their tensors. The 14-px patch convolution
runs as one matrix product (``models.patchify``), with the same weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from eve_lightning.models.patch_embedding import normalize_pixels
from eve_lightning.models.patchify import PatchConv2d

_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.")


def encoder_layers(clip: CLIPVisionModel) -> nn.ModuleList:
    """The encoder blocks of an HF CLIPVisionModel.

    ``vision_model.encoder.layers``, or ``encoder.layers`` in transformers releases without the inner module.
    """
    return getattr(clip, "vision_model", clip).encoder.layers


class ClipTeacher(nn.Module):
    """Wraps an HF CLIPVisionModel cut after the distilled layer; returns that layer's output without the CLS token.

    Args:
        clip: the vision model (all its layers; the ones above ``select_layer`` are removed here).
        select_layer: index into HF's ``hidden_states`` (0 = embeddings, i = output of layer i; negative counts
            from the top: -1 = last layer, -2 = penultimate, as EVE and LLaVA use).
    """

    def __init__(self, clip: CLIPVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        total = len(encoder_layers(clip))
        kept = select_layer if select_layer >= 0 else total + 1 + select_layer
        if not 0 <= kept <= total:
            raise ValueError(
                f"teacher select_layer {select_layer} is outside the {total}-layer CLIP encoder "
                f"(use {-total - 1}..{total}; -2 = penultimate)"
            )
        getattr(clip, "vision_model", clip).encoder.layers = encoder_layers(clip)[:kept]
        clip.config.num_hidden_layers = kept  # the config describes the model that runs
        embeddings = getattr(clip, "vision_model", clip).embeddings
        embeddings.patch_embedding = PatchConv2d.from_conv(embeddings.patch_embedding)  # one GEMM, same weights
        self.clip = clip
        self.select_layer = select_layer
        self.kept_layers = kept
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.register_load_state_dict_pre_hook(ClipTeacher._drop_unused_layers)

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    @property
    def grid(self) -> int:
        cfg = self.clip.config
        return cfg.image_size // cfg.patch_size

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder blocks that run (up to the distilled layer)."""
        return encoder_layers(self.clip)

    def train(self, mode: bool = True) -> ClipTeacher:
        """Stay in eval mode: the teacher is never trained (dropout off, no statistics updates)."""
        del mode
        return super().train(False)

    def unused_keys(self, keys: list[str], prefix: str = "") -> list[str]:
        """Keys (under ``prefix``) of a full CLIP state dict that belong to the layers above the distilled one."""
        out = []
        for key in keys:
            match = _LAYER_KEY.search(key, len(prefix)) if key.startswith(prefix) else None
            if match and int(match.group(1)) >= self.kept_layers:
                out.append(key)
        return out

    @staticmethod
    def _drop_unused_layers(module: ClipTeacher, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-time hook: tensors of the layers above the distilled one (a full CLIP checkpoint) are not needed."""
        for key in module.unused_keys(list(state_dict), prefix):
            del state_dict[key]

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher features.

        Args:
            pixel_values: uint8 [N, 3, 336, 336] (or normalized floats).

        Returns:
            [N, grid*grid, C] patch features of the distilled layer, row-major, detached.
        """
        x = pixel_values
        dtype = next(self.clip.parameters()).dtype
        x = normalize_pixels(x, dtype) if x.dtype == torch.uint8 else x.to(dtype)
        out = self.clip(pixel_values=x)  # the cut encoder's last output is the distilled layer's
        return out.last_hidden_state[:, 1:]  # [N, g*g, C]


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
