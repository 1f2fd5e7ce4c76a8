"""Fixtures of the data tests: the real SentencePiece tokenizer, Qwen's real BPE vocabulary and real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


# The pre-tokenizer split of Qwen (and Qwen2/2.5) BPE, as their tokenizer files spell it.
QWEN_SPLIT = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """A local Qwen2.5-Instruct-style tokenizer folder built from the real Qwen BPE vocabulary.

    The vocabulary is ``qwen.tiktoken`` (151,643 byte-level BPE ranks) shipped by the Apache-2.0 ``dashscope``
    package (dev extra); the folder adds NFC normalisation, Qwen's split pattern and the three special tokens with
    their ids, EOS ``<|im_end|>`` and pad ``<|endoftext|>`` as Qwen2.5-7B-Instruct's tokenizer, and no BOS.
    """
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("dashscope (dev extra) ships Qwen's vocabulary: pip install -e '.[dev]'")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_SPLIT).converted()
    assert tok.get_vocab_size() == 151643
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    folder = tmp_path_factory.mktemp("qwen2.5-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(
        folder
    )
    return folder
