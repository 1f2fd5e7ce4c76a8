"""Test-side EVE/teacher views of a photo, written from the spec's resize/pad rule (section 2)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

BG = (122, 116, 104)


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """A real photo from scikit-image, optionally resized to (W, H) to get a given aspect ratio."""
    img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    return img.resize(size) if size else img


def band(w0: int, h0: int) -> tuple[int, int, bool]:
    """(k, pre) in 14-px teacher cells, and whether the image is landscape."""
    landscape = w0 > h0
    ratio = h0 / w0 if landscape else w0 / h0
    k = math.ceil(336 * ratio / 14)
    return k, (24 - k) // 2, landscape


def view(img: Image.Image, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, side, side] canvas and [side, side] mask for side in (336, 672, 1344)."""
    k, pre, landscape = band(*img.size)
    r = side // 336
    long_, short, off = side, 14 * k * r, 14 * pre * r
    size = (long_, short) if landscape else (short, long_)
    canvas = Image.new("RGB", (side, side), BG)
    canvas.paste(img.resize(size, Image.BICUBIC), (0, off) if landscape else (off, 0))
    mask = np.zeros((side, side), np.uint8)
    if landscape:
        mask[off : off + short, :] = 1
    else:
        mask[:, off : off + short] = 1
    pixels = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
    return pixels, torch.from_numpy(mask)


def batch_views(images: list[Image.Image | None], side: int):
    """Stack EVE + teacher views; None gives a text-only row (background canvas, zero mask)."""
    ev, em, tv, tm = [], [], [], []
    for img in images:
        if img is None:
            ev.append(torch.tensor(BG, dtype=torch.uint8).view(3, 1, 1).expand(3, side, side).clone())
            em.append(torch.zeros(side, side, dtype=torch.uint8))
            tv.append(torch.tensor(BG, dtype=torch.uint8).view(3, 1, 1).expand(3, 336, 336).clone())
            tm.append(torch.zeros(336, 336, dtype=torch.uint8))
            continue
        p, m = view(img, side)
        ev.append(p)
        em.append(m)
        p, m = view(img, 336)
        tv.append(p)
        tm.append(m)
    return torch.stack(ev), torch.stack(em), torch.stack(tv), torch.stack(tm)


def make_batch(side, max_text=40, seed=0):
    """4 rows: landscape, portrait, text-only, square; random text with supervised spans; right padding."""
    g = torch.Generator().manual_seed(seed)
    images = [photo("astronaut", (600, 300)), photo("coffee", (200, 560)), None, photo("chelsea", (300, 300))]
    pix, mask, tpix, tmask = batch_views(images, side)
    lengths = [30, 17, 40, 25]
    img_at = [1, 6, None, 24]  # image first, in the middle, none, at the very end
    ids = torch.zeros(4, max_text, dtype=torch.long)
    labels = torch.full((4, max_text), IGNORE_INDEX)
    attn = torch.zeros(4, max_text, dtype=torch.bool)
    for b, n in enumerate(lengths):
        row = torch.randint(3, 32000, (n,), generator=g)
        row[0] = 1
        if img_at[b] is not None:
            row[img_at[b]] = IMAGE_TOKEN_INDEX
        ids[b, :n] = row
        attn[b, :n] = True
        sup = torch.rand(n, generator=g) < 0.6
        sup[0] = False
        lab = torch.where(sup, row, IGNORE_INDEX)
        lab[row == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
        labels[b, :n] = lab
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "pixel_values": pix,
        "pixel_mask": mask,
        "teacher_pixel_values": tpix,
        "teacher_pixel_mask": tmask,
    }
