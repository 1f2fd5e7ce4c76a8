"""The image-token rule of EVE, shared by the data pipeline and the model (the one place that states it).

An image whose valid band covers ``grid_h x grid_w`` token cells becomes one CLS token, then every row of
``grid_w`` cell tokens followed by one split token. The data side counts it before the model runs (row lengths,
packing, the start-up length check, ``data.geometry.image_token_count``); the patch embedding lays its tokens out by
it. Plain arithmetic, so it takes ints and integer tensors alike; this module imports nothing.
"""

from __future__ import annotations

from typing import TypeVar

Count = TypeVar("Count")  # int, or an integer tensor of any shape


def band_token_count(grid_h: Count, grid_w: Count) -> Count:
    """Return ``1 + grid_h * (grid_w + 1)``: EVE tokens of a band of ``grid_h x grid_w`` token cells.

    Args:
        grid_h: token rows of the band (an int, or a tensor of them, e.g. [N]).
        grid_w: token columns, like ``grid_h``.

    Returns:
        The token count, of the inputs' type and shape (601 for a square image at 672 px, 2353 at 1344 px).
    """
    return 1 + grid_h * (grid_w + 1)
