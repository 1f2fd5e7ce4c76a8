"""Which canvases a batch's image placeholders take, for EVE v1 and EVEv2 alike (``prepare_inputs`` of both)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eve_lightning.constants import IMAGE_TOKEN_INDEX


@dataclass
class Placeholders:
    """The image placeholders of a batch and the canvases they take.

    Attributes:
        is_img: [B, L] the placeholders on real tokens.
        rows: [N] row of each placeholder on a real token, in row-major order.
        cols: [N] its column.
        pixels: uint8 [N, 3, H, W] one canvas per placeholder, or None when there is none.
        mask: [N, H, W] the canvases' valid pixels, or None.
    """

    is_img: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    pixels: torch.Tensor | None
    mask: torch.Tensor | None


def select_canvases(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    pixel_mask: torch.Tensor | None,
    packed: bool,
) -> Placeholders:
    """Find the placeholders and pick each one's canvas.

    Args:
        input_ids: [B, L] with IMAGE_TOKEN_INDEX placeholders.
        attention_mask: [B, L] True/1 on real tokens (placeholders on padding are ignored).
        pixel_values: padded rows: [B, 3, H, W] indexed by row (rows without a placeholder are ignored); packed rows:
            [N, 3, H, W], one canvas per placeholder in row-major order.
        pixel_mask: [B, H, W] or [N, H, W], like ``pixel_values``.
        packed: the packed layout (several samples, so several placeholders, per row).

    Raises:
        ValueError: a padded row with two placeholders, placeholders without pixels, or packed canvases that do not
            match the placeholders one to one.
    """
    is_img = (input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()  # [B, L]
    if not packed and bool((is_img.sum(1) > 1).any()):
        raise ValueError("a row holds more than one image placeholder; a padded row takes one image (one per sample)")
    rows, cols = is_img.nonzero(as_tuple=True)  # [N], [N]
    if not rows.numel():
        return Placeholders(is_img, rows, cols, None, None)
    if pixel_values is None or pixel_mask is None:
        raise ValueError("input_ids hold image placeholders but no pixel_values / pixel_mask were given")
    if packed and pixel_values.shape[0] != rows.numel():
        raise ValueError(f"{rows.numel()} image placeholders but {pixel_values.shape[0]} packed images")
    if packed:
        return Placeholders(is_img, rows, cols, pixel_values, pixel_mask)
    return Placeholders(is_img, rows, cols, pixel_values[rows], pixel_mask[rows])
