"""Fixtures of the data tests: the real SentencePiece tokenizer and real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eve_lightning.data.tokenizer import SentencePieceTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def tok() -> SentencePieceTokenizer:
    """mistral-common's LLaMA-style SentencePiece model (32000 ids, BOS 1, EOS 2, unk/pad 0)."""
    t = load_tokenizer()
    assert isinstance(t, SentencePieceTokenizer)
    return t


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos from scikit-image, plus a portrait and a very wide crop of them."""
    from skimage import data

    imgs = {
        "astronaut": Image.fromarray(data.astronaut()),  # 512 x 512
        "coffee": Image.fromarray(data.coffee()),  # 600 x 400
        "chelsea": Image.fromarray(data.chelsea()),  # 451 x 300
        "rocket": Image.fromarray(data.rocket()),  # 640 x 427
        "camera": Image.fromarray(data.camera()),  # 512 x 512, L
    }
    imgs["chelsea_portrait"] = Image.fromarray(np.ascontiguousarray(data.chelsea().transpose(1, 0, 2)))  # 300 x 451
    imgs["rocket_wide"] = Image.fromarray(data.rocket()[100:260])  # 640 x 160
    return imgs
