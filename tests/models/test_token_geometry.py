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
