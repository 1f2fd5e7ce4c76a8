"""EVEv2 patch embedding: raw pixels of any aspect ratio -> one LLM-width token per 32 x 32 px cell, batched.

The function, for every image: conv 16x16 stride 16 (3 -> ``vision_hidden``, with bias) -> exact GELU -> conv 2x2
stride 2 (``vision_hidden`` -> LLM width, with bias), so one token per 32 x 32 px cell and no projector after it;
then the layout ``[CLS, r1c1..r1cw, SPL, ..., rhc1..rhcw, SPL]`` of ``1 + h * (w + 1)`` tokens, with a learned
class token (``class_embedding``) and a learned split token (``split_embedding``) at the end of every row of cells.

Inputs follow the EVE v1 batch contract: uint8 canvases [N, 3, S, S] (S a multiple of 32) and 0/1 pixel masks
[N, S, S] marking the image band (at the top-left, any aspect ratio, whole 32-px cells). Every cell depends on
its own 32 x 32 pixels only, so the two convolutions run on the valid cells of all images at once (a
[M, 3, 32, 32] stack, never the padding of the canvases), and the layout is one gather.
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
            pixel_mask: [N, S, S] 0/1, a rectangle of whole ``cell_size`` cells per image.

        Returns:
            [N, 4] int64 on the mask's device.

        Raises:
            ValueError: a mask is empty, covers part of a cell, or is not a rectangle (one read-back in all).
        """
        c = self.cell_size
        cover = F.avg_pool2d(pixel_mask.float().unsqueeze(1), c).squeeze(1)  # [N, g, g] covered share of each cell
        inside = cover > 0
        g = inside.shape[-1]
        idx = torch.arange(g, device=pixel_mask.device)
        rows, cols = inside.any(2), inside.any(1)  # [N, g] each
        r0 = torch.where(rows, idx, g).amin(1)
        c0 = torch.where(cols, idx, g).amin(1)
        h = (torch.where(rows, idx, -1).amax(1) + 1 - r0).clamp(min=0)
        w = (torch.where(cols, idx, -1).amax(1) + 1 - c0).clamp(min=0)
        grids = torch.stack([r0, c0, h, w], 1)  # [N, 4]
        box = band_cells(grids, g)  # [N, g, g]
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
            pixel_values: uint8 [N, 3, S, S] (or already-normalized floats), S a multiple of ``cell_size``.
            pixel_mask: [N, S, S] 0/1 band masks.

        Returns:
            ImageTokens with tokens [sum_i 1 + h_i (w_i + 1), llm_hidden] and grids (row0, col0, h, w).
        """
        n, _, height, width = pixel_values.shape
        c = self.cell_size
        if height != width or height % c:
            raise ValueError(f"canvases must be square with a side that is a multiple of {c} px, got {height}x{width}")
        g = height // c  # cells per canvas side
        grids = self.bands(pixel_mask)  # [N, 4]
        valid = band_cells(grids, g)  # [N, g, g]
        # the 32x32 pixel blocks of all valid cells, image by image, row-major: [M, 3, c, c]
        cells = pixel_values.view(n, 3, g, c, g, c).permute(0, 2, 4, 1, 3, 5)[valid]
        weight = self.patch_embedding[0].weight
        x = normalize_pixels(cells, weight.dtype) if cells.dtype == torch.uint8 else cells.to(weight.dtype)
        feats = self.patch_embedding(x).flatten(1)  # [M, llm_hidden]

        lengths = 1 + grids[:, 2] * (grids[:, 3] + 1)  # [N]
        lay = token_layout(grids, lengths, g)
        is_cell = ~lay["is_cls"] & ~lay["is_spl"]  # [T]
        cell_rank = (torch.cumsum(is_cell, 0) - 1).clamp(min=0)  # [T] row of `feats` of each cell token
        tokens = feats[cell_rank]  # [T, D]
        tokens = torch.where(lay["is_spl"][:, None], self.split_embedding.to(tokens.dtype), tokens)
        tokens = torch.where(lay["is_cls"][:, None], self.class_embedding.to(tokens.dtype), tokens)
        return ImageTokens(tokens=tokens, lengths=lengths, grids=grids, canvas_grid=g)


def band_cells(grids: torch.Tensor, g: int) -> torch.Tensor:
    """Bool [N, g, g]: the cells of each image's band (row0, col0, h, w) on a g x g canvas grid."""
    r0, c0, h, w = grids.unbind(-1)  # [N] each
    ar = torch.arange(g, device=grids.device)
    in_rows = (ar >= r0[:, None]) & (ar < (r0 + h)[:, None])  # [N, g]
    in_cols = (ar >= c0[:, None]) & (ar < (c0 + w)[:, None])  # [N, g]
    return in_rows[:, :, None] & in_cols[:, None, :]
