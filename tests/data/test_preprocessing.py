"""Image geometry and the two views (spec section 2) on real photos: exact bands, masks, padding colour, modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from eve_lightning.constants import BACKGROUND_RGB
from eve_lightning.data.geometry import Box, band_geometry, image_token_count, max_image_tokens
from eve_lightning.data.image import eve_view, prepare_image, teacher_view, to_rgb

BG = np.array(BACKGROUND_RGB, dtype=np.uint8)


def original_k(w: int, h: int) -> int:
    """The original float formula of spec section 2."""
    return math.ceil(336 * h / w / 14) if w > h else math.ceil(336 * w / h / 14)


@pytest.mark.parametrize(
    ("size", "image_size", "k", "eve", "teacher", "grid", "tokens"),
    [
        ((512, 512), 672, 24, Box(0, 0, 672, 672), Box(0, 0, 336, 336), (24, 24), 601),
        ((512, 512), 1344, 24, Box(0, 0, 1344, 1344), Box(0, 0, 336, 336), (48, 48), 2353),
        ((600, 400), 672, 16, Box(0, 112, 672, 448), Box(0, 56, 336, 224), (16, 24), 401),
        ((640, 427), 672, 17, Box(0, 84, 672, 476), Box(0, 42, 336, 238), (17, 24), 426),
        ((300, 451), 672, 16, Box(112, 0, 448, 672), Box(56, 0, 224, 336), (24, 16), 409),
        ((300, 451), 1344, 16, Box(224, 0, 896, 1344), Box(56, 0, 224, 336), (48, 32), 1585),
        ((1024, 256), 672, 6, Box(0, 252, 672, 168), Box(0, 126, 336, 84), (6, 24), 151),
        ((1024, 256), 1344, 6, Box(0, 504, 1344, 336), Box(0, 126, 336, 84), (12, 48), 589),
        ((2000, 10), 672, 1, Box(0, 308, 672, 28), Box(0, 154, 336, 14), (1, 24), 26),
    ],
)
def test_band_geometry_table(size, image_size, k, eve, teacher, grid, tokens):
    g = band_geometry(*size, image_size)
    assert (g.k, g.eve, g.teacher, (g.grid_h, g.grid_w), g.num_image_tokens) == (k, eve, teacher, grid, tokens)


def test_geometry_matches_original_formula_and_token_counts():
    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 5000, size=(2000, 2)):
        w, h = int(w), int(h)
        k = original_k(w, h)
        for size, r in ((672, 2), (1344, 4)):
            g = band_geometry(w, h, size)
            assert g.k == k
            pre = (24 - k) // 2 * 14
            short = g.eve.y0 if w > h else g.eve.x0
            assert short == r * pre
            # spec 1.5: landscape 1 + k*25 / 1 + 2k*49; portrait and square 1 + 24(k+1) / 1 + 48(2k+1)
            expected = {(672, True): 1 + k * 25, (1344, True): 1 + 2 * k * 49}.get(
                (size, w > h), 1 + 24 * (k + 1) if size == 672 else 1 + 48 * (2 * k + 1)
            )
            assert g.num_image_tokens == expected
            # every band edge sits on a whole 28-px token cell (so the 14-px patch mask is exactly 0/1)
            assert all(v % 28 == 0 for v in (g.eve.x0, g.eve.y0, g.eve.width, g.eve.height))


def test_image_token_count():
    assert image_token_count(24, 24) == 601
    assert image_token_count(48, 48) == 2353
    assert max_image_tokens(672) == 601 and max_image_tokens(1344) == 2353
    with pytest.raises(ValueError):
        image_token_count(0, 24)
    with pytest.raises(ValueError):
        band_geometry(10, 10, 896)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "chelsea_portrait", "rocket", "rocket_wide"])
@pytest.mark.parametrize("image_size", [672, 1344])
def test_eve_view_on_photos(photos, name, image_size):
    img = photos[name]
    pixels, mask = eve_view(img, image_size)
    g = band_geometry(img.width, img.height, image_size)
    assert pixels.shape == (3, image_size, image_size) and pixels.dtype == np.uint8
    assert mask.shape == (image_size, image_size) and mask.dtype == np.uint8
    band = np.zeros_like(mask)
    band[g.eve.y0 : g.eve.y1, g.eve.x0 : g.eve.x1] = 1
    np.testing.assert_array_equal(mask, band)
    # padding is exactly the background colour, the band is exactly the bicubic resize of the photo
    hwc = pixels.transpose(1, 2, 0)
    assert (hwc[mask == 0] == BG).all()
    expected = np.asarray(img.resize((g.eve.width, g.eve.height), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(hwc[g.eve.y0 : g.eve.y1, g.eve.x0 : g.eve.x1], expected)
    # 14-px patch mask is exactly 0/1 and covers the token grid
    patches = mask.reshape(image_size // 14, 14, image_size // 14, 14).mean(axis=(1, 3))
    assert set(np.unique(patches)) <= {0.0, 1.0}
    assert patches.sum() == (g.grid_h * 2) * (g.grid_w * 2)


@pytest.mark.parametrize("name", ["coffee", "chelsea_portrait", "rocket_wide", "astronaut"])
def test_teacher_view_on_photos(photos, name):
    img = photos[name]
    pixels, mask = teacher_view(img)
    g = band_geometry(img.width, img.height, 672)
    assert pixels.shape == (3, 336, 336) and mask.shape == (336, 336)
    assert mask.sum() == g.teacher.width * g.teacher.height == 336 * 14 * g.k
    assert (pixels.transpose(1, 2, 0)[mask == 0] == BG).all()
    rows, cols = np.nonzero(mask)
    assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (
        g.teacher.y0,
        g.teacher.x0,
        g.teacher.y1,
        g.teacher.x1,
    )


def test_fast_teacher_from_pre_resized_image_is_close_to_bicubic(photos):
    img = photos["coffee"]
    g = band_geometry(img.width, img.height, 672)
    pre_resized = img.resize((g.eve.width, g.eve.height), Image.Resampling.BICUBIC)  # what make_shards stores
    fast = prepare_image(pre_resized, 672, teacher=True)
    exact = prepare_image(pre_resized, 672, teacher=True, exact_teacher=True)
    assert fast.teacher_band.shape == exact.teacher_band.shape == (224, 336, 3)
    diff = np.abs(fast.teacher_band.astype(int) - exact.teacher_band.astype(int))
    assert diff.mean() < 2.0  # box 2x2 average vs bicubic: same picture up to filter sharpness
    np.testing.assert_array_equal(fast.eve_band, np.asarray(pre_resized))  # no resize when already exact


def test_any_mode_ends_rgb(photos):
    rgb = photos["astronaut"]
    cases = {
        "L": photos["camera"],
        "1": photos["camera"].convert("1"),
        "P": rgb.quantize(64),
        "CMYK": rgb.convert("CMYK"),
        "RGBA": rgb.convert("RGBA"),
        "LA": photos["camera"].convert("LA"),
        "I;16": Image.fromarray(np.asarray(photos["camera"], dtype=np.uint16) * 257),
    }
    for mode, img in cases.items():
        assert img.mode == mode
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == img.size, mode
        pixels, mask = eve_view(img, 672)
        assert pixels.dtype == np.uint8 and mask.sum() > 0
    # 16-bit grey is scaled, not clipped to white
    np.testing.assert_array_equal(np.asarray(to_rgb(cases["I;16"]))[..., 0], np.asarray(photos["camera"]))
    # CMYK converts back to (nearly) the original colours
    assert np.abs(np.asarray(to_rgb(cases["CMYK"])).astype(int) - np.asarray(rgb).astype(int)).mean() < 2


def test_transparency_becomes_background():
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent on the left half
    rgba[:, 30:, 3] = 255
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (out[:, :30] == BG).all() and (out[:, 30:] == 255).all()
    pal = Image.fromarray(rgba, "RGBA").convert("P")
    pal.info["transparency"] = pal.getpixel((0, 0))
    assert (np.asarray(to_rgb(pal))[:, :30] == BG).all()
