"""models.image_inputs.select_canvases: the placeholders of a batch and their canvases, in both layouts."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.constants import IMAGE_TOKEN_INDEX
from eve_lightning.models.image_inputs import select_canvases

P = IMAGE_TOKEN_INDEX


def _canvases(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).clone()  # canvas i is all i
    return pixels, torch.ones(n, 4, 4, dtype=torch.bool)


def test_padded_rows_take_their_own_canvas_and_padding_placeholders_are_ignored():
    ids = torch.tensor([[1, P, 5, 0], [1, 5, 6, 0], [1, 7, P, P]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])  # row 2's second placeholder is padding
    pixels, pmask = _canvases(3)
    found = select_canvases(ids, mask, pixels, pmask, packed=False)
    assert found.rows.tolist() == [0, 2] and found.cols.tolist() == [1, 2]
    assert found.is_img.nonzero().tolist() == [[0, 1], [2, 2]]
    assert found.pixels[:, 0, 0, 0].tolist() == [0, 2]  # rows 0 and 2's canvases, row 1 has none


def test_packed_rows_take_one_canvas_per_placeholder_in_order():
    ids = torch.tensor([[P, 5, P, 6], [7, P, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    pixels, pmask = _canvases(3)
    found = select_canvases(ids, mask, pixels, pmask, packed=True)
    assert (found.rows.tolist(), found.cols.tolist()) == ([0, 0, 1], [0, 2, 1])
    assert found.pixels is pixels
    with pytest.raises(ValueError, match="3 image placeholders but 2 packed images"):
        select_canvases(ids, mask, pixels[:2], pmask[:2], packed=True)


def test_a_batch_without_placeholders_needs_no_pixels_and_errors_name_the_problem():
    ids, mask = torch.tensor([[1, 5, 6]]), torch.ones(1, 3)
    found = select_canvases(ids, mask, None, None, packed=False)
    assert found.rows.numel() == 0 and found.pixels is None
    with pytest.raises(ValueError, match="no pixel_values / pixel_mask"):
        select_canvases(torch.tensor([[1, P, 6]]), mask, None, None, packed=False)
    with pytest.raises(ValueError, match="more than one image placeholder"):
        select_canvases(torch.tensor([[P, P, 6]]), mask, *_canvases(1), packed=False)
