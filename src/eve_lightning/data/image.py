"""Image preprocessing as pure functions: any mode to RGB, the EVE view and the 336 px teacher view, with masks.

EVEv2 (``prepare_image_evev2``, ``evev2_view``) keeps no teacher view: one band resized by
``geometry.evev2_geometry``, pasted at the top-left of a canvas the collator sizes per batch.

Everything stays uint8 (no normalization on the CPU; the model normalizes on the device). The hot path keeps only
the resized *band* of each view (``PreparedImage``); the collator pastes bands onto the background canvases of a
whole batch at once. ``eve_view`` / ``teacher_view`` render single full canvases for inference and tests.

Resampling: bicubic from the given image, as the original. One deliberate shortcut: when the image already has
the exact EVE band size (shards pre-resized by ``make_shards --max-side``), the teacher band is its r x r box
average (``Image.reduce``), 10x cheaper than a bicubic resize and visually equivalent; pass
``exact_teacher=True`` to always resize bicubically.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from eve_lightning.constants import BACKGROUND_RGB, TEACHER_IMAGE_SIZE
from eve_lightning.data.geometry import (
    BandGeometry,
    Box,
    GridGeometry,
    band_geometry,
    evev2_geometry,
    scale_factor,
)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def open_image(data: bytes) -> Image.Image:
    """Open encoded image bytes lazily (the header is read, pixels are decoded on first use)."""
    with warnings.catch_warnings():
        # Pixel caps are enforced when shards are written; do not let Pillow's own warning spam the workers.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an RGB image, whatever its mode.

    Transparent images (RGBA, LA, P with a transparency key) are composited over the EVE background colour, so
    see-through regions look like padding rather than like whatever colour the encoder stored there. 16-bit
    greyscale is scaled to 8 bits instead of clipped.

    Args:
        img: any PIL image (L, 1, P, RGBA, LA, CMYK, YCbCr, I;16, ...).

    Returns:
        An RGB image of the same size (``img`` itself when it is already RGB).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND_RGB)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode.startswith("I;16"):
        grey = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)  # [H, W]
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class PreparedImage:
    """The resized bands of one image, ready to be pasted onto canvases.

    Attributes:
        geometry: where the bands go (``geometry.band_geometry``; EVEv2: ``geometry.evev2_geometry``).
        eve_band: uint8 [h, w, 3] with (w, h) = the EVE box size.
        teacher_band: uint8 [h, w, 3] teacher band, or None when the teacher view is off.
    """

    geometry: BandGeometry | GridGeometry
    eve_band: np.ndarray
    teacher_band: np.ndarray | None


def _resized(img: Image.Image, box: Box) -> Image.Image:
    size = (box.width, box.height)
    return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)


def prepare_image(
    img: Image.Image, image_size: int, teacher: bool = True, exact_teacher: bool = False
) -> PreparedImage:
    """Resize one image into its EVE band (and teacher band).

    Args:
        img: source image of any mode.
        image_size: EVE canvas side, 672 or 1344.
        teacher: also build the 336 px teacher band.
        exact_teacher: always resize the teacher band bicubically from ``img`` (see module docstring).

    Returns:
        The prepared bands and their geometry.
    """
    rgb = to_rgb(img)
    geom = band_geometry(rgb.width, rgb.height, image_size)
    eve_img = _resized(rgb, geom.eve)
    teacher_band = None
    if teacher:
        r = scale_factor(image_size)
        if not exact_teacher and rgb.size == (geom.eve.width, geom.eve.height):
            teacher_img = rgb.reduce(r)  # exact integer factor: box average of r x r pixels
        else:
            teacher_img = _resized(rgb, geom.teacher)
        teacher_band = np.asarray(teacher_img, dtype=np.uint8)  # [h_t, w_t, 3]
    return PreparedImage(geom, np.asarray(eve_img, dtype=np.uint8), teacher_band)


def prepare_image_evev2(img: Image.Image, max_size: int, training: bool = True) -> PreparedImage:
    """Resize one image into its EVEv2 band (bicubic, as the original's ``Image.resize``); no teacher band.

    Args:
        img: source image of any mode.
        max_size: EVEv2's ``max_size`` (800 or 1600).
        training: the training rule (shrink only) or the inference rule (scale up or down); see ``evev2_geometry``.

    Returns:
        The prepared band (uint8 [h, w, 3], h and w multiples of 32) and its geometry.
    """
    rgb = to_rgb(img)
    geom = evev2_geometry(rgb.width, rgb.height, max_size, training)
    band = _resized(rgb, geom.eve)
    return PreparedImage(geom, np.asarray(band, dtype=np.uint8), None)


def evev2_view(
    img: Image.Image, max_size: int, training: bool = False, square: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return the EVEv2 view of one image: the band on a canvas of its own size (or a square one).

    Args:
        img: source image.
        max_size: EVEv2's ``max_size`` (800 or 1600).
        training: resize rule (inference by default, as the original's ``process_images``).
        square: pad the canvas to a square of the longer side (for a model that takes square canvases only).

    Returns:
        ``(pixels, mask)``: uint8 [3, H, W] and uint8 [H, W] with the band at the top-left (H, W multiples of 32).
    """
    prep = prepare_image_evev2(img, max_size, training)
    height, width = prep.geometry.height, prep.geometry.width
    if square:
        height = width = max(height, width)
    pixels, mask = blank_canvas(height, width)
    box = prep.geometry.eve
    pixels[:, : box.height, : box.width] = prep.eve_band.transpose(2, 0, 1)  # [3, h, w]
    mask[: box.height, : box.width] = 1
    return pixels, mask


def render_canvas(band: np.ndarray, box: Box, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste a band onto a background canvas.

    Args:
        band: uint8 [h, w, 3] with (w, h) = (box.width, box.height).
        box: where the band goes.
        side: canvas side in px.

    Returns:
        ``(pixels, mask)``: uint8 [3, side, side] channel-first canvas and uint8 [side, side] band mask.
    """
    if band.shape != (box.height, box.width, 3):
        raise ValueError(f"band of shape {band.shape} does not match box {box}")
    pixels, mask = blank_canvas(side)
    pixels[:, box.y0 : box.y1, box.x0 : box.x1] = band.transpose(2, 0, 1)  # [3, h, w]
    mask[box.y0 : box.y1, box.x0 : box.x1] = 1
    return pixels, mask


def blank_canvas(side: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return a background uint8 [3, side, width] canvas and its all-zero [side, width] mask (square by default)."""
    width = side if width is None else width
    pixels = np.empty((3, side, width), dtype=np.uint8)
    for c, value in enumerate(BACKGROUND_RGB):
        pixels[c] = value
    return pixels, np.zeros((side, width), dtype=np.uint8)


def eve_view(img: Image.Image, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the EVE view of ``img``: uint8 [3, S, S] pixels and uint8 [S, S] mask (S = image_size)."""
    prep = prepare_image(img, image_size, teacher=False)
    return render_canvas(prep.eve_band, prep.geometry.eve, image_size)


def teacher_view(img: Image.Image, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return the 336 px teacher view of ``img`` (bicubic from ``img``): uint8 [3, 336, 336] and [336, 336]."""
    prep = prepare_image(img, 672, teacher=True, exact_teacher=exact)
    assert prep.teacher_band is not None
    return render_canvas(prep.teacher_band, prep.geometry.teacher, TEACHER_IMAGE_SIZE)
