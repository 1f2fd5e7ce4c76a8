"""EVEv2 patch embedding: token counts from the rule, and equality with the original's per-image formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eve_lightning.models.evev2 import EveV2PatchEmbedding
from tests.models.evev2.helpers import padded_batch, tiny_vlm

# CLIP normalisation of the original's preprocessor configs (eve-anyratio-res{800,1600}-patch16)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
CELL = 32  # px per token: a 16 px patch conv, then a 2x2 conv

# (height, width) of the image band in px, per canvas side: whole 32-px cells, at the top-left
BANDS = {
    800: {"square": (800, 800), "landscape": (416, 800), "portrait": (800, 288)},
    1600: {"square": (1600, 1600), "landscape": (832, 1600), "portrait": (1600, 576)},
}


def canvases(bands, side, offsets=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (len(bands), 3, side, side), generator=gen, dtype=torch.uint8)
    masks = torch.zeros(len(bands), side, side, dtype=torch.uint8)
    for i, (bh, bw) in enumerate(bands):
        r0, c0 = offsets[i] if offsets else (0, 0)
        masks[i, r0 : r0 + bh, c0 : c0 + bw] = 1
    return pixels, masks


@pytest.mark.parametrize("side", [800, 1600])
def test_token_count_is_one_class_token_plus_a_split_token_per_row_of_32px_cells(side):
    pe = EveV2PatchEmbedding(vision_hidden=8, llm_hidden=16)
    bands = list(BANDS[side].values())
    pixels, masks = canvases(bands, side)
    with torch.no_grad():
        out = pe(pixels, masks)
    expected = []
    for bh, bw in bands:
        h, w = bh // CELL, bw // CELL  # token rows and columns
        expected.append(1 + h * (w + 1))
    assert out.lengths.tolist() == expected
    assert out.tokens.shape == (sum(expected), 16)
    assert out.canvas_grid == side // CELL
    starts = [0, *torch.tensor(expected).cumsum(0).tolist()[:-1]]
    for (bh, bw), start, n in zip(bands, starts, expected):
        tokens = out.tokens[start : start + n]
        w = bw // CELL
        assert torch.equal(tokens[0], pe.class_embedding.detach())
        split_at = torch.arange(1, n)[torch.arange(n - 1) % (w + 1) == w]  # the end of every row
        assert split_at.numel() == bh // CELL
        assert all(torch.equal(tokens[j], pe.split_embedding.detach()) for j in split_at.tolist())


def original_formula(pe, pixels, r0, c0, bh, bw):
    """The original vision tokenizer on one image: crop, normalise, conv 16/16, GELU, conv 2/2, split + class."""
    crop = pixels[:, r0 : r0 + bh, c0 : c0 + bw].float() / 255
    x = ((crop - MEAN) / STD)[None]
    conv1, conv2 = pe.patch_embedding[0], pe.patch_embedding[2]
    x = F.gelu(F.conv2d(x, conv1.weight, conv1.bias, stride=16))
    x = F.conv2d(x, conv2.weight, conv2.bias, stride=2)[0]  # [D, h, w]
    d, h, _ = x.shape
    x = torch.cat([x, pe.split_embedding.view(d, 1, 1).expand(d, h, 1)], -1)  # a split token ends every row
    return torch.cat([pe.class_embedding[None], x.flatten(1).T])  # [1 + h (w + 1), D]


def test_batched_embedding_equals_the_original_per_image_formula_and_its_gradients():
    torch.manual_seed(0)
    pe = EveV2PatchEmbedding(vision_hidden=16, llm_hidden=24)
    side = 192
    bands = [(192, 192), (64, 192), (192, 32), (96, 128)]
    offsets = [(0, 0), (0, 0), (0, 0), (32, 64)]  # the last band does not start at the top-left
    pixels, masks = canvases(bands, side, offsets)
    out = pe(pixels, masks)
    assert out.grids.tolist() == [
        [r0 // CELL, c0 // CELL, bh // CELL, bw // CELL] for (r0, c0), (bh, bw) in zip(offsets, bands)
    ]
    weights = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(1))
    (out.tokens * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in pe.named_parameters()}
    pe.zero_grad(set_to_none=True)

    ref = torch.cat([original_formula(pe, pixels[i], *offsets[i], *bands[i]) for i in range(len(bands))])
    torch.testing.assert_close(out.tokens, ref, rtol=1e-5, atol=1e-5)
    (ref * weights).sum().backward()
    for name, p in pe.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_parameter_names_are_the_original_vision_tokenizer_names():
    names = {n for n, _ in EveV2PatchEmbedding(8, 16).named_parameters()}
    assert names == {
        "patch_embedding.0.weight",
        "patch_embedding.0.bias",
        "patch_embedding.2.weight",
        "patch_embedding.2.bias",
        "class_embedding",
        "split_embedding",
    }


@pytest.mark.parametrize(
    ("band", "offset"),
    [((100, 160), (0, 0)), ((160, 160), (16, 0)), (None, (0, 0))],
    ids=["cuts-a-cell", "shifted-by-half-a-cell", "empty"],
)
def test_masks_that_do_not_cover_whole_cells_are_refused(band, offset):
    pe = EveV2PatchEmbedding(8, 16)
    pixels, masks = canvases([(32, 32)], 192)
    masks.zero_()
    if band is not None:
        masks[0, offset[0] : offset[0] + band[0], offset[1] : offset[1] + band[1]] = 1
    with pytest.raises(ValueError, match=r"image\(s\) \[0\] is empty, cuts a 32x32-px cell or is not a rectangle"):
        pe(pixels, masks)


def test_a_canvas_that_is_not_whole_cells_is_refused():
    pe = EveV2PatchEmbedding(8, 16)
    with pytest.raises(ValueError, match="canvas sides must be multiples of the 32-px token cell, got 100x100 px"):
        pe(torch.zeros(1, 3, 100, 100, dtype=torch.uint8), torch.ones(1, 100, 100, dtype=torch.uint8))


def test_rectangular_canvases_give_the_same_tokens_as_square_canvases_of_the_same_images():
    torch.manual_seed(0)
    pe = EveV2PatchEmbedding(vision_hidden=16, llm_hidden=24)
    bands = [(64, 160), (96, 64), (32, 128)]  # tallest band 96 px, widest 160 px: a 96 x 160 rect canvas
    pixels, masks = canvases(bands, 160)
    rect_pixels, rect_masks = pixels[:, :, :96, :160].contiguous(), masks[:, :96, :160].contiguous()
    assert rect_masks.sum() == masks.sum()  # the crop keeps every band
    with torch.no_grad():
        square = pe(pixels, masks)
        rect = pe(rect_pixels, rect_masks)
    assert torch.equal(rect.tokens, square.tokens)
    assert torch.equal(rect.lengths, square.lengths) and torch.equal(rect.grids, square.grids)
    assert rect.lengths.tolist() == [1 + 2 * 6, 1 + 3 * 3, 1 + 1 * 5]
    assert rect.canvas_grid == 160 // CELL  # the row stride of the cell index


def test_a_rectangular_batch_trains_like_the_same_batch_on_square_canvases():
    vlm = tiny_vlm()
    square = padded_batch([(12, 2, (64, 160)), (10, 0, (96, 64)), (9, None, None)])
    rect = dict(square, pixel_values=square["pixel_values"][:, :, :96], pixel_mask=square["pixel_mask"][:, :96])
    with torch.no_grad():
        want = vlm(**square)
        got = vlm(**rect)
    assert got.stats == want.stats and got.stats["n_image_tokens"] == (1 + 2 * 6) + (1 + 3 * 3)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)


def test_a_mask_that_does_not_match_the_canvases_is_refused():
    pe = EveV2PatchEmbedding(8, 16)
    pixels = torch.zeros(1, 3, 64, 96, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"pixel_mask has shape \(1, 64, 64\) but the canvases need"):
        pe(pixels, torch.ones(1, 64, 64, dtype=torch.uint8))
