"""Any-ratio image geometry of EVE: where an image lands on the EVE and teacher canvases, and its token count.

The rule (spec section 2) works on the teacher grid of 24 x 24 CLIP patches (336 px, patch 14). The long side of
the image fills the canvas; the short side covers ``k`` patch rows (landscape) or columns (portrait and square),
``k = ceil(24 * short / long)``, centred at ``pre = floor((24 - k) / 2) * 14`` px. The EVE canvas of side
``S = r * 336`` (r = 2 at 672 px, 4 at 1344 px) is the same layout scaled by ``r``. Everything here is integer
arithmetic, so the result equals the original's float formula for every image size.

EVEv2 (``family="evev2"``) has another rule (``evev2_geometry``): no fixed canvas; the image is resized so that its
area is about ``max_size ** 2`` with each side a multiple of the 32 px token cell (patch 16 x merge 2), aspect
ratio kept, and pasted at the top-left of a canvas the collator sizes per batch. The token count is the same rule
(``image_token_count``) on its grid of 32 px cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from eve_lightning.constants import PATCH_SIZE, POOL_STRIDE, TEACHER_IMAGE_SIZE
from eve_lightning.geometry import band_token_count  # the rule itself, shared with the model

TEACHER_GRID = TEACHER_IMAGE_SIZE // PATCH_SIZE  # 24 teacher patches per side
TOKEN_CELL = PATCH_SIZE * POOL_STRIDE  # 28 px: one EVE token covers a 28 x 28 px cell
SUPPORTED_IMAGE_SIZES = (672, 1344)
Family = Literal["eve", "evev2"]
FAMILIES = ("eve", "evev2")  # EVE v1 (this module's band rule) and EVEv2 (``evev2_geometry``)
EVEV2_CELL = 32  # px per EVEv2 token side: a 16 px patch convolution, then a 2 x 2 merge


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel rectangle ``[x0, x0 + width) x [y0, y0 + height)`` on a square canvas."""

    x0: int
    y0: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        return self.y0 + self.height


@dataclass(frozen=True)
class BandGeometry:
    """Placement of one image on the EVE canvas (side ``image_size``) and on the 336 px teacher canvas.

    Attributes:
        image_size: EVE canvas side S (672 or 1344).
        landscape: True when width > height (the band spans full width, ``k`` patch rows tall).
        k: number of valid teacher patch rows (landscape) or columns (portrait/square), 1..24.
        eve: the pasted band on the EVE canvas (its size is what the image is resized to).
        teacher: the pasted band on the teacher canvas.
        grid_h: EVE token rows of the band (band height / 28).
        grid_w: EVE token columns of the band (band width / 28).
    """

    image_size: int
    landscape: bool
    k: int
    eve: Box
    teacher: Box
    grid_h: int
    grid_w: int

    @property
    def num_image_tokens(self) -> int:
        """Tokens the model puts in place of the image: ``1 + grid_h * (grid_w + 1)``."""
        return image_token_count(self.grid_h, self.grid_w)


def image_token_count(grid_h: int, grid_w: int) -> int:
    """Return the EVE token count of an image whose valid band is ``grid_h x grid_w`` token cells.

    One CLS token, then every row of ``grid_w`` tokens followed by one split token.

    Args:
        grid_h: token rows (band height in 28 px cells at 672 px).
        grid_w: token columns.

    Returns:
        ``1 + grid_h * (grid_w + 1)``: 601 for a square image at 672 px, 2353 at 1344 px.
    """
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"token grid must be at least 1 x 1, got {grid_h} x {grid_w}")
    return band_token_count(grid_h, grid_w)


def scale_factor(image_size: int) -> int:
    """Return r = image_size / 336 after checking that ``image_size`` is a supported EVE canvas side."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES}, got {image_size}")
    return image_size // TEACHER_IMAGE_SIZE


def band_geometry(width: int, height: int, image_size: int) -> BandGeometry:
    """Compute where an image of ``width x height`` px goes on both canvases.

    Args:
        width: source image width in px (>= 1).
        height: source image height in px (>= 1).
        image_size: EVE canvas side, 672 or 1344.

    Returns:
        The band geometry; the EVE band offsets and sizes are multiples of 28 * r / 2 px, so the 14 px patch mask
        and the 2 x 2 pooled token grid are exact.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    r = scale_factor(image_size)
    landscape = width > height
    short, long = (height, width) if landscape else (width, height)
    k = -(-TEACHER_GRID * short // long)  # ceil(24 * short / long) >= 1
    pre = (TEACHER_GRID - k) // 2 * PATCH_SIZE
    band = k * PATCH_SIZE
    if landscape:
        teacher = Box(0, pre, TEACHER_IMAGE_SIZE, band)
    else:
        teacher = Box(pre, 0, band, TEACHER_IMAGE_SIZE)
    eve = Box(teacher.x0 * r, teacher.y0 * r, teacher.width * r, teacher.height * r)
    return BandGeometry(
        image_size=image_size,
        landscape=landscape,
        k=k,
        eve=eve,
        teacher=teacher,
        grid_h=eve.height // TOKEN_CELL,
        grid_w=eve.width // TOKEN_CELL,
    )


def max_image_tokens(image_size: int, family: Family = "eve") -> int:
    """Return the token count of a square image at ``image_size`` (the canvas side, or EVEv2's ``max_size``).

    EVE v1: the largest possible count (601 at 672 px, 2353 at 1344 px). EVEv2: the count of a square image of area
    ``max_size ** 2`` (651 at 800 px, 2551 at 1600 px), which sizes the length checks and the planner; a tall image
    takes one split token per extra row (e.g. 701 for 1:16 at 800 px), and a sample whose image does not fit
    ``max_length`` is dropped and counted.
    """
    if family == "evev2":
        side = image_size // EVEV2_CELL
        return image_token_count(side, side)
    _check_family(family)
    side = image_size // TOKEN_CELL
    return image_token_count(side, side)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"model family must be one of {FAMILIES} (EVE v1, EVEv2), got {family!r}")


@dataclass(frozen=True)
class GridGeometry:
    """Placement of one image under EVEv2's rule: a band of whole 32 px cells at the top-left of the canvas.

    Attributes:
        width: band width in px after the resize (a multiple of ``EVEV2_CELL``).
        height: band height in px (a multiple of ``EVEV2_CELL``).
    """

    width: int
    height: int

    @property
    def eve(self) -> Box:
        """The band on the canvas (top-left corner, as the EVEv2 patch embedding expects)."""
        return Box(0, 0, self.width, self.height)

    @property
    def grid_h(self) -> int:
        return self.height // EVEV2_CELL

    @property
    def grid_w(self) -> int:
        return self.width // EVEV2_CELL

    @property
    def num_image_tokens(self) -> int:
        """Tokens the model puts in place of the image: ``1 + grid_h * (grid_w + 1)``."""
        return image_token_count(self.grid_h, self.grid_w)


def evev2_geometry(width: int, height: int, max_size: int, training: bool = True) -> GridGeometry:
    """EVEv2's resize rule: area about ``max_size ** 2``, each side a multiple of 32 px, aspect ratio kept.

    With ``s = sqrt(width * height) / max_size``:

    - training (the original's data loader): an image larger than that area is shrunk by ``s`` (a smaller one keeps
      its size), then each side is rounded to the nearest multiple of 32 px (Python's ``round``, halves to even);
    - inference (the original's ``process_images``): every image is scaled by ``1 / s``, up or down, and each side
      is rounded up to a multiple of 32 px.

    Each side is at least one cell (32 px). The long side may exceed ``max_size`` (a 4:1 image at 800 px becomes
    1600 x 384 px in training).

    Args:
        width: source width in px (>= 1).
        height: source height in px (>= 1).
        max_size: 800 (stages 0 and 1.0) or 1600 (later stages); any multiple of 32 works.
        training: the training rule (True) or the inference rule (False).

    Returns:
        The band size and its token grid.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if max_size < EVEV2_CELL or max_size % EVEV2_CELL:
        raise ValueError(f"max_size must be a positive multiple of {EVEV2_CELL} px (800 or 1600), got {max_size}")
    scale = math.sqrt(width * height) / max_size
    c = EVEV2_CELL
    if training:
        w, h = (width / scale, height / scale) if scale > 1 else (width, height)
        cells_w, cells_h = max(round(w / c), 1), max(round(h / c), 1)
    else:
        cells_w = max(math.ceil(width / scale / c), 1)
        cells_h = max(math.ceil(height / scale / c), 1)
    return GridGeometry(cells_w * c, cells_h * c)
