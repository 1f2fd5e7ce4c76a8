"""EVEv2 patch embedding: raw pixels of any aspect ratio -> one LLM-width token per 32 x 32 px cell, batched.

The function, for every image: conv 16x16 stride 16 (3 -> ``vision_hidden``, with bias) -> exact GELU -> conv 2x2
stride 2 (``vision_hidden`` -> LLM width, with bias), so one token per 32 x 32 px cell and no projector after it;
then the layout ``[CLS, r1c1..r1cw, SPL, ..., rhc1..rhcw, SPL]`` of ``1 + h * (w + 1)`` tokens, with a learned
class token (``class_embedding``) and a learned split token (``split_embedding``) at the end of every row of cells.

Inputs follow the EVE v1 batch contract: uint8 canvases [N, 3, H, W] and 0/1 pixel masks [N, H, W] marking the
image band (at the top-left, any aspect ratio, whole 32-px cells). Canvases may be square (H = W, ``data.canvas``
``fixed`` or ``square``) or rectangular (``rect``: the batch's tallest band x widest band); H and W are multiples of
32, so the canvas is a gh x gw grid of cells. Every cell depends on its own 32 x 32 pixels only, so the two
convolutions run on the valid cells of all images at once (a [M, 3, 32, 32] stack, never the padding of the
canvases), and the layout is one gather: an image's tokens do not depend on the canvas it was pasted on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eve_lightning.models.patch_embedding import ImageTokens, normalize_pixels, token_layout
from eve_lightning.models.patchify import PatchConv2d


class EveV2PatchEmbedding(nn.Module):
    """Pixels + band mask -> EVEv2 image tokens (class token, cell tokens, split token per row).

    Parameter names follow the original vision tokenizer: ``patch_embedding.0`` (16 px conv),
    ``patch_embedding.2`` (2x2 conv), ``class_embedding``, ``split_embedding``.

    Args:
        vision_hidden: width of the first convolution (1024 in EVE-7B-HD-v2.0).
        llm_hidden: LLM width, the output width of the second convolution.
        patch_size: first convolution's kernel and stride in px (16).
        merge_size: second convolution's kernel and stride in patches (2): a token covers patch * merge px.
    """

    def __init__(self, vision_hidden: int, llm_hidden: int, patch_size: int = 16, merge_size: int = 2) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.cell_size = patch_size * merge_size
        self.patch_embedding = nn.Sequential(
            PatchConv2d(3, vision_hidden, kernel_size=patch_size, stride=patch_size),
            nn.GELU(),
            PatchConv2d(vision_hidden, llm_hidden, kernel_size=merge_size, stride=merge_size),
        )
        self.class_embedding = nn.Parameter(torch.randn(llm_hidden))
        self.split_embedding = nn.Parameter(torch.randn(llm_hidden))

    def bands(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Cell band (row0, col0, h, w) of every image from its pixel mask.

        Args:
            pixel_mask: [N, H, W] 0/1, a rectangle of whole ``cell_size`` cells per image.

        Returns:
            [N, 4] int64 on the mask's device.

        Raises:
            ValueError: a mask is empty, covers part of a cell, or is not a rectangle (one read-back in all).
        """
        c = self.cell_size
        cover = F.avg_pool2d(pixel_mask.float().unsqueeze(1), c).squeeze(1)  # [N, gh, gw] covered share per cell
        inside = cover > 0
        gh, gw = inside.shape[-2:]
        row_idx = torch.arange(gh, device=pixel_mask.device)
        col_idx = torch.arange(gw, device=pixel_mask.device)
        rows, cols = inside.any(2), inside.any(1)  # [N, gh], [N, gw]
        r0 = torch.where(rows, row_idx, gh).amin(1)
        c0 = torch.where(cols, col_idx, gw).amin(1)
        h = (torch.where(rows, row_idx, -1).amax(1) + 1 - r0).clamp(min=0)
        w = (torch.where(cols, col_idx, -1).amax(1) + 1 - c0).clamp(min=0)
        grids = torch.stack([r0, c0, h, w], 1)  # [N, 4]
        box = band_cells(grids, gh, gw)  # [N, gh, gw]
        bad = (h == 0) | ((cover > 0) & (cover < 1)).flatten(1).any(1) | (box != inside).flatten(1).any(1)
        if bool(bad.any()):
            ids = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"pixel_mask of image(s) {ids} is empty, cuts a {c}x{c}-px cell or is not a rectangle: EVEv2 takes "
                f"image bands of whole {c}-px cells (resize images to multiples of {c} px before pasting them)"
            )
        return grids

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> ImageTokens:
        """Embed N images.

        Args:
            pixel_values: uint8 [N, 3, H, W] (or already-normalized floats), square or rectangular, H and W
                multiples of ``cell_size``.
            pixel_mask: [N, H, W] 0/1 band masks.

        Returns:
            ImageTokens with tokens [sum_i 1 + h_i (w_i + 1), llm_hidden], grids (row0, col0, h, w) and
            ``canvas_grid`` = gw (cells per canvas row, the stride of the row-major cell index).

        Raises:
            ValueError: a canvas side is not a multiple of ``cell_size``, or the mask's shape differs from the
                canvases'.
        """
        n, _, height, width = pixel_values.shape
        c = self.cell_size
        if height % c or width % c:
            raise ValueError(
                f"canvas sides must be multiples of the {c}-px token cell, got {height}x{width} px; pad the canvases "
                f"to whole cells (data.canvas=square or rect does)"
            )
        if tuple(pixel_mask.shape) != (n, height, width):
            raise ValueError(
                f"pixel_mask has shape {tuple(pixel_mask.shape)} but the canvases need [N, H, W] = [{n}, {height}, "
                f"{width}]"
            )
        gh, gw = height // c, width // c  # cells per canvas column and row
        grids = self.bands(pixel_mask)  # [N, 4]
        valid = band_cells(grids, gh, gw)  # [N, gh, gw]
        # the 32x32 pixel blocks of all valid cells, image by image, row-major: [M, 3, c, c]
        cells = pixel_values.view(n, 3, gh, c, gw, c).permute(0, 2, 4, 1, 3, 5)[valid]
        weight = self.patch_embedding[0].weight
        x = normalize_pixels(cells, weight.dtype) if cells.dtype == torch.uint8 else cells.to(weight.dtype)
        feats = self.patch_embedding(x).flatten(1)  # [M, llm_hidden]

        lengths = 1 + grids[:, 2] * (grids[:, 3] + 1)  # [N]
        lay = token_layout(grids, lengths, gw)
        is_cell = ~lay["is_cls"] & ~lay["is_spl"]  # [T]
        cell_rank = (torch.cumsum(is_cell, 0) - 1).clamp(min=0)  # [T] row of `feats` of each cell token
        tokens = feats[cell_rank]  # [T, D]
        tokens = torch.where(lay["is_spl"][:, None], self.split_embedding.to(tokens.dtype), tokens)
        tokens = torch.where(lay["is_cls"][:, None], self.class_embedding.to(tokens.dtype), tokens)
        return ImageTokens(tokens=tokens, lengths=lengths, grids=grids, canvas_grid=gw)


def band_cells(grids: torch.Tensor, gh: int, gw: int | None = None) -> torch.Tensor:
    """Bool [N, gh, gw]: the cells of each image's band (row0, col0, h, w) on a gh x gw canvas grid (gw = gh)."""
    gw = gh if gw is None else gw
    r0, c0, h, w = grids.unbind(-1)  # [N] each
    ar_rows = torch.arange(gh, device=grids.device)
    ar_cols = torch.arange(gw, device=grids.device)
    in_rows = (ar_rows >= r0[:, None]) & (ar_rows < (r0 + h)[:, None])  # [N, gh]
    in_cols = (ar_cols >= c0[:, None]) & (ar_cols < (c0 + w)[:, None])  # [N, gw]
    return in_rows[:, :, None] & in_cols[:, None, :]
