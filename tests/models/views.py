"""Test-side EVE/teacher views of a photo, written from the spec's resize/pad rule (section 2)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

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
