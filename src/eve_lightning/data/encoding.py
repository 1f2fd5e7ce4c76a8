"""Template parts to ``input_ids`` and ``labels``, with exact label masks, and length fitting around the image.

Consecutive text parts form a run that is tokenized in one call (so ids equal what the tokenizer gives for the
run as a whole). Inside a run, the boundary between a masked prefix and the supervised text that follows is the
length of the longest common prefix of ``encode(prefix)`` and ``encode(run)``: tokens the prompt alone already
produces are masked, every other token (including one that straddles the boundary) is supervised. No token-count
arithmetic, so the masks are exact for any tokenizer. BOS/EOS (or a template's named end token, such as
``<|im_end|>``) are inserted as ids, the image as IMAGE_TOKEN_INDEX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.templates import ImageSlot, Part, Special, Text
from eve_lightning.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one sample (before image expansion).

    Attributes:
        input_ids: int64 [n]; at most one IMAGE_TOKEN_INDEX.
        labels: int64 [n]; IGNORE_INDEX where not supervised, else equal to ``input_ids``.
        image_pos: index of IMAGE_TOKEN_INDEX in ``input_ids``, -1 for text-only samples.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    image_pos: int

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _merge_runs(parts: Sequence[Part]) -> list[Part]:
    """Merge adjacent text parts with the same ``train`` flag (fewer tokenizer calls, same ids)."""
    out: list[Part] = []
    for p in parts:
        if isinstance(p, Text) and out and isinstance(out[-1], Text) and out[-1].train == p.train:
            out[-1] = Text(out[-1].text + p.text, p.train)
        else:
            out.append(p)
    return out


def _encode_run(run: list[Text], tok: TextTokenizer) -> tuple[list[int], list[int]]:
    full = tok.encode("".join(t.text for t in run))
    labels: list[int] = []
    start, prefix = 0, ""
    for j, seg in enumerate(run):
        if j == len(run) - 1:
            end = len(full)
        else:
            prefix += seg.text
            end = max(start, _common_prefix(full, tok.encode(prefix)))
        labels += full[start:end] if seg.train else [IGNORE_INDEX] * (end - start)
        start = end
    return full, labels


def encode_parts(parts: Sequence[Part], tok: TextTokenizer) -> Encoded:
    """Tokenize rendered template parts into ids and exact labels.

    Args:
        parts: output of ``ChatTemplate.render`` / ``render_prompt``.
        tok: the tokenizer.

    Returns:
        The encoded sample.
    """
    ids: list[int] = []
    labels: list[int] = []
    image_pos = -1
    run: list[Text] = []
    for part in [*_merge_runs(parts), None]:
        if isinstance(part, Text):
            run.append(part)
            continue
        if run:
            run_ids, run_labels = _encode_run(run, tok)
            ids += run_ids
            labels += run_labels
            run = []
        if isinstance(part, Special):
            token = tok.bos_id if part.which == "bos" else tok.eos_id
            if part.token is not None:
                named = tok.special_id(part.token)
                token = token if named is None else named
            if token is not None:
                ids.append(token)
                labels.append(token if part.train else IGNORE_INDEX)
        elif isinstance(part, ImageSlot):
            if image_pos >= 0:
                raise ValueError("a sample can hold only one image")
            image_pos = len(ids)
            ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
    return Encoded(np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64), image_pos)


def expanded_length(num_ids: int, num_image_tokens: int) -> int:
    """Return the sequence length after the model replaces the image placeholder by its tokens."""
    return num_ids - 1 + num_image_tokens if num_image_tokens else num_ids


def fit_length(enc: Encoded, num_image_tokens: int, max_length: int) -> Encoded | str:
    """Truncate text after the image so that the expanded sequence fits ``max_length``.

    Args:
        enc: the encoded sample.
        num_image_tokens: tokens the image expands to (0 for text-only samples).
        max_length: limit on the expanded length.

    Returns:
        The (possibly truncated) sample, or a drop reason: ``image_does_not_fit`` when the text before the image
        plus the image already exceed ``max_length``, ``all_masked`` when no supervised token is left.
    """
    if (enc.image_pos >= 0) != (num_image_tokens > 0):
        raise ValueError("image placeholder and image token count disagree")
    limit = max_length
    if num_image_tokens:
        if enc.image_pos + num_image_tokens > max_length:
            return "image_does_not_fit"
        limit = max_length - num_image_tokens + 1
    if len(enc.input_ids) > limit:
        enc = Encoded(enc.input_ids[:limit], enc.labels[:limit], enc.image_pos)
    if enc.num_label_tokens == 0:
        return "all_masked"
    return enc
