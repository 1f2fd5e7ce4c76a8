"""Patch Embedding Layer (PEL): raw pixels of any aspect ratio -> EVE image tokens, batched without loops.

Function (spec section 1.2), for every image of the batch:
  1. a 14-px convolution (no bias) over the whole padded canvas, computed as one matrix product (`patchify`);
  2. crop to the bounding box of the image band given by the pixel mask;
  3. 2x2 local attention pooling: each 28-px cell's average is the query, its four 14-px sub-patches are the
     keys/values (attention scale hidden^-0.5, not head_dim^-0.5), residual onto the average;
  4. a learnable CLS token attends globally over the cell tokens of its image (same attention rule);
  5. layout `[CLS, r1c1..r1cw, SPL, ..., rhc1..rhcw, SPL]` of length 1 + h(w+1).

Batching: the band of every image starts at an even patch index (the preprocessing pads by whole 28-px
cells), so the 2x2 windows of the crop are exactly the 2x2 windows of the canvas. The local attention
therefore runs on the valid cells of all images at once, the global attention is a masked softmax over each
image's canvas grid, and the final layout is one gather. Output tokens of all images are concatenated
("flat" layout) so that no padding is ever projected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eve_lightning.constants import CLIP_MEAN, CLIP_STD
from eve_lightning.geometry import band_token_count
from eve_lightning.models.patchify import PatchConv2d

# Text-only rows carry an all-zero mask; the reference function then reads the top-left 16x16 patches.
EMPTY_MASK_PATCHES = 16


def normalize_pixels(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn uint8 RGB into CLIP-normalized floats on the pixels' own device.

    Args:
        pixels: uint8 [N, 3, H, W].
        dtype: output dtype (usually the conv weight's).

    Returns:
        [N, 3, H, W] in `dtype`.
    """
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels.float() / 255.0 - mean) / std).to(dtype)


@dataclass
class ImageTokens:
    """EVE tokens of N images in the flat layout.

    Attributes:
        tokens: [sum(lengths), D] tokens of image 0, then image 1, ...
        lengths: [N] int64, 1 + h(w+1) per image.
        grids: [N, 4] int64 (row0, col0, h, w) of each image's token band on the canvas token grid.
        canvas_grid: side of the canvas token grid (24 at 672 px, 48 at 1344 px).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    grids: torch.Tensor
    canvas_grid: int


def token_layout(grids: torch.Tensor, lengths: torch.Tensor, canvas_grid: int) -> dict[str, torch.Tensor]:
    """Describe every token of the flat layout: which image, which kind, which canvas cell.

    Args:
        grids: [N, 4] (row0, col0, h, w).
        lengths: [N] tokens per image.
        canvas_grid: side of the canvas token grid.

    Returns:
        dict of [sum(lengths)] tensors: `image` (image index), `offset` (position within the image's tokens),
        `is_cls`, `is_spl`, `cell` (row-major canvas cell index, valid where neither CLS nor SPL).
    """
    n = lengths.shape[0]
    image = torch.repeat_interleave(torch.arange(n, device=lengths.device), lengths)  # [T]
    starts = torch.cumsum(lengths, 0) - lengths  # [N]
    offset = torch.arange(image.shape[0], device=lengths.device) - starts[image]  # [T]
    row0, col0, _, w = grids[image].unbind(-1)  # each [T]
    j = (offset - 1).clamp(min=0)
    row, col = j // (w + 1), j % (w + 1)
    is_cls = offset == 0
    is_spl = (~is_cls) & (col == w)
    cell = (row0 + row) * canvas_grid + (col0 + col).clamp(max=canvas_grid - 1)
    return {"image": image, "offset": offset, "is_cls": is_cls, "is_spl": is_spl, "cell": cell}


class PoolingAttention(nn.Module):
    """Multi-head attention with LayerNorm+Linear query and key/value maps and an output projection.

    The logit scale is hidden^-0.5 over the full width (EVE's choice, needed for official weights).
    """

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = hidden**-0.5
        self.q_norm = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.kv_norm = nn.LayerNorm(hidden)
        self.kv_proj = nn.Linear(hidden, 2 * hidden, bias=False)
        self.out_proj = nn.Linear(hidden, hidden)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., heads, D/heads]."""
        q = self.q_proj(self.q_norm(x))
        return q.unflatten(-1, (self.num_heads, -1))

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., D] -> two [..., heads, D/heads] (first half of the projection = keys)."""
        k, v = self.kv_proj(self.kv_norm(x)).chunk(2, dim=-1)
        return k.unflatten(-1, (self.num_heads, -1)), v.unflatten(-1, (self.num_heads, -1))


class PatchEmbedding(nn.Module):
    """Pixels + band mask -> EVE image tokens (CLS, cell tokens, SPL row ends)."""

    def __init__(self, hidden: int = 1024, num_heads: int = 8, patch_size: int = 14, pool_stride: int = 2):
        super().__init__()
        if pool_stride != 2:
            raise ValueError("EVE's local attention pools 2x2 windows; pool_stride must be 2")
        self.hidden = hidden
        self.patch_size = patch_size
        self.pool_stride = pool_stride
        self.conv = PatchConv2d(3, hidden, kernel_size=patch_size, stride=patch_size, bias=False)  # one GEMM
        self.cls_token = nn.Parameter(torch.randn(hidden))
        self.split_token = nn.Parameter(torch.randn(hidden))
        self.local_attn = PoolingAttention(hidden, num_heads)
        self.global_attn = PoolingAttention(hidden, num_heads)

    def bands(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Token-grid band (row0, col0, h, w) of every image from its pixel mask.

        Args:
            pixel_mask: [N, S, S] 0/1.

        Returns:
            [N, 4] int64 on the mask's device. An all-zero mask gives the top-left 8x8 cells.
        """
        p, s = self.patch_size, self.pool_stride
        patch_mask = F.avg_pool2d(pixel_mask.float().unsqueeze(1), p).squeeze(1) > 0  # [N, G2, G2]
        rows, cols = patch_mask.any(2), patch_mask.any(1)  # [N, G2] each
        g2 = patch_mask.shape[-1]
        idx = torch.arange(g2, device=pixel_mask.device)
        big = torch.full_like(idx, g2)

        def first_last(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            first = torch.where(valid, idx, big).amin(1)
            last = torch.where(valid, idx, -1).amax(1)
            return first, last

        r_first, r_last = first_last(rows)
        c_first, c_last = first_last(cols)
        empty = ~rows.any(1)
        r_first = torch.where(empty, 0, r_first)
        c_first = torch.where(empty, 0, c_first)
        r_last = torch.where(empty, EMPTY_MASK_PATCHES - 1, r_last)
        c_last = torch.where(empty, EMPTY_MASK_PATCHES - 1, c_last)
        edges = torch.stack([r_first, c_first, r_last + 1, c_last + 1], 1)  # [N, 4]
        if bool((edges % s).any()):
            bad = (edges % s).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"pixel_mask band of image(s) {bad} does not start and end on whole {s}x{s}-patch cells; "
                "build masks with eve_lightning.data preprocessing (it pads by whole cells)"
            )
        return torch.stack(
            [r_first // s, c_first // s, (r_last - r_first + 1) // s, (c_last - c_first + 1) // s], dim=1
        )

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> ImageTokens:
        """Embed N images.

        Args:
            pixel_values: uint8 [N, 3, S, S] (or already-normalized floats).
            pixel_mask: [N, S, S] 0/1 band mask.

        Returns:
            ImageTokens with tokens [sum_i 1 + h_i (w_i + 1), D].
        """
        n, _, size, _ = pixel_values.shape
        d, s = self.hidden, self.pool_stride
        if size % (self.patch_size * s):
            raise ValueError(f"canvas side {size} is not a multiple of {self.patch_size * s} px")
        g = size // (self.patch_size * s)  # canvas token grid side
        grids = self.bands(pixel_mask)  # [N, 4]

        x = pixel_values
        if x.dtype == torch.uint8:
            x = normalize_pixels(x, self.conv.weight.dtype)
        feat = self.conv(x)  # [N, D, 2g, 2g]
        # 2x2 windows of the canvas: [N, g, g, 4, D] (window members row-major)
        sub = feat.unflatten(2, (g, s)).unflatten(4, (g, s)).permute(0, 2, 4, 3, 5, 1).reshape(n, g, g, s * s, d)

        row0, col0, h, w = grids.unbind(-1)  # [N] each
        ar = torch.arange(g, device=grids.device)
        in_rows = (ar >= row0[:, None]) & (ar < (row0 + h)[:, None])  # [N, g]
        in_cols = (ar >= col0[:, None]) & (ar < (col0 + w)[:, None])  # [N, g]
        valid = in_rows[:, :, None] & in_cols[:, None, :]  # [N, g, g]

        # Local attention on valid cells only: [M, 4, D]
        win = sub[valid]
        pooled = win.mean(1)  # [M, D]
        q = self.local_attn.queries(pooled)  # [M, H, d_h]
        k, v = self.local_attn.keys_values(win)  # [M, 4, H, d_h]
        # 4 keys per query: broadcast products, not batched matrix products of 1x4 tiles
        attn = ((q[:, None] * k).sum(-1) * self.local_attn.scale).softmax(1)  # [M, 4, H]
        agg = (attn[..., None] * v).sum(1).flatten(1)  # [M, D]
        cells = pooled + self.local_attn.out_proj(agg)  # [M, D]

        canvas = feat.new_zeros(n, g * g, d)  # [N, g*g, D]
        canvas = canvas.masked_scatter(valid.view(n, g * g, 1), cells)

        # Global CLS attention: masked softmax over each image's valid cells.
        cls_q = self.global_attn.queries(self.cls_token.to(feat.dtype))  # [H, d_h]
        gk, gv = self.global_attn.keys_values(canvas)  # [N, g*g, H, d_h]
        logits = torch.einsum("hc,nphc->nhp", cls_q, gk) * self.global_attn.scale  # [N, H, g*g]
        logits = logits.masked_fill(~valid.view(n, 1, g * g), float("-inf"))
        g_agg = torch.einsum("nhp,nphc->nhc", logits.softmax(-1), gv).flatten(1)  # [N, D]
        cls = self.cls_token.to(feat.dtype) + self.global_attn.out_proj(g_agg)  # [N, D]

        lengths = band_token_count(h, w)  # [N], the data pipeline's count of the same band
        lay = token_layout(grids, lengths, g)
        flat_cells = canvas.reshape(n * g * g, d)[lay["image"] * g * g + lay["cell"]]  # [T, D]
        tokens = torch.where(lay["is_spl"][:, None], self.split_token.to(feat.dtype), flat_cells)
        tokens = torch.where(lay["is_cls"][:, None], cls[lay["image"]], tokens)  # [T, D]
        return ImageTokens(tokens=tokens, lengths=lengths, grids=grids, canvas_grid=g)
