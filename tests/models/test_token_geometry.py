"""Image token counts and aligner grid mapping for square, landscape and portrait inputs."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.models.patch_embedding import PatchEmbedding
from tests.helpers.views import band, batch_views, photo


@pytest.fixture(scope="module")
def pel():
    torch.manual_seed(0)
    return PatchEmbedding(hidden=32, num_heads=4)


# (W, H) of the photo before preprocessing: square, landscape 2:1, portrait 1:3, very wide 5:1
SHAPES = [(512, 512), (600, 300), (200, 600), (1000, 200)]


@pytest.mark.parametrize("side", [672, 1344])
def test_token_count_is_one_plus_h_times_w_plus_one(pel, side):
    images = [photo("astronaut", s) for s in SHAPES]
    pix, mask, _, _ = batch_views(images, side)
    with torch.no_grad():
        out = pel(pix, mask)
    r = side // 672  # token cells per teacher cell along each axis
    expected = []
    for w0, h0 in SHAPES:
        k, _, landscape = band(w0, h0)
        h, w = (k * r, 24 * r) if landscape else (24 * r, k * r)
        expected.append(1 + h * (w + 1))
    assert out.lengths.tolist() == expected
    assert out.tokens.shape == (sum(expected), 32)
    square = 601 if side == 672 else 2353
    assert expected[0] == square
    # landscape 2:1 at 672: k = 12 teacher rows -> 12 token rows of 24 -> 1 + 12 * 25
    if side == 672:
        assert expected[1] == 1 + 12 * 25
        assert expected[2] == 1 + 24 * (8 + 1)


def test_split_and_cls_tokens_sit_where_the_layout_says(pel):
    pix, mask, _, _ = batch_views([photo("coffee", (600, 300))], 672)
    with torch.no_grad():
        out = pel(pix, mask)
    h, w = out.grids[0, 2:].tolist()
    rows = out.tokens[1:].view(h, w + 1, -1)
    assert torch.equal(rows[:, -1], pel.split_token.detach().expand(h, -1))
    assert not torch.equal(out.tokens[0], pel.split_token.detach())
    # band offset on the 24x24 canvas grid: (24 - 12) / 2 = 6 rows down, full width
    assert out.grids[0].tolist() == [6, 0, 12, 24]


def test_unaligned_mask_band_is_refused(pel):
    pix, mask, _, _ = batch_views([photo("coffee", (600, 300))], 672)
    mask = torch.roll(mask, 14, dims=1)  # band now starts on an odd patch row
    with pytest.raises(ValueError, match="whole 2x2-patch cells"):
        pel(pix, mask)


# (W, H) from very wide to very tall, odd sizes included: every band width the rule can give at 672 px
ASPECT_RATIOS = [(1000, 100), (640, 480), (1920, 1080), (333, 334), (512, 512), (300, 451), (90, 1000), (7, 5)]


@pytest.mark.parametrize("side", [672, 1344])
def test_the_model_counts_image_tokens_by_the_data_pipelines_rule(pel, side):
    """PatchEmbedding lengths equal data.geometry's count of the same image: both come from one rule."""
    from eve_lightning.data.geometry import band_geometry, image_token_count
    from eve_lightning.data.image import blank_canvas
    from eve_lightning.geometry import band_token_count

    pix, mask, expected = [], [], []
    for w0, h0 in ASPECT_RATIOS:
        geom = band_geometry(w0, h0, side)
        pixels, band = blank_canvas(side)
        band[geom.eve.y0 : geom.eve.y1, geom.eve.x0 : geom.eve.x1] = 1  # the data pipeline's band mask
        pix.append(torch.from_numpy(pixels))
        mask.append(torch.from_numpy(band))
        expected.append(geom.num_image_tokens)
        assert geom.num_image_tokens == image_token_count(geom.grid_h, geom.grid_w) == band_token_count(
            geom.grid_h, geom.grid_w
        )  # fmt: skip
    with torch.no_grad():
        out = pel(torch.stack(pix), torch.stack(mask))
    assert out.lengths.tolist() == expected
    assert out.grids[:, 2:].tolist() == [[band_geometry(w, h, side).grid_h, band_geometry(w, h, side).grid_w]
                                         for w, h in ASPECT_RATIOS]  # fmt: skip
    assert torch.equal(band_token_count(out.grids[:, 2], out.grids[:, 3]), out.lengths)  # the rule on tensors
    assert len(set(expected)) >= 6  # the ratios really give different counts
