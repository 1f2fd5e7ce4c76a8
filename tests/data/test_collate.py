"""Padded and packed collation: layout, masks, and packing keeps every token with its label."""

from __future__ import annotations

import numpy as np
import pytest

from eve_lightning.constants import BACKGROUND_RGB, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.collate import (
    PackedCollator,
    PaddedCollator,
    ProcessedSample,
    pack_balanced,
    pack_first_fit,
)
from eve_lightning.data.image import prepare_image

BG = np.array(BACKGROUND_RGB, dtype=np.uint8)


def make_samples(photos, n: int, seed: int = 0, text_only_every: int = 4) -> list[ProcessedSample]:
    """Samples with random ids/labels; most carry one of the photos (different aspect ratios)."""
    rng = np.random.default_rng(seed)
    names = ["coffee", "chelsea_portrait", "rocket_wide", "astronaut"]
    out = []
    for i in range(n):
        length = int(rng.integers(3, 60))
        ids = rng.integers(3, 32000, size=length)
        labels = np.where(rng.random(length) < 0.5, ids, IGNORE_INDEX)
        labels[-1] = ids[-1]
        image, pos, tokens = None, -1, 0
        if i % text_only_every:
            image = prepare_image(photos[names[i % len(names)]], 672, teacher=True)
            pos = int(rng.integers(0, 3))
            ids[pos] = IMAGE_TOKEN_INDEX
            labels[pos] = IGNORE_INDEX
            tokens = image.geometry.num_image_tokens
        out.append(ProcessedSample(f"s{i}", ids.astype(np.int64), labels.astype(np.int64), pos, image, tokens))
    return out


def test_padded_layout(photos):
    samples = make_samples(photos, 5)
    batch = PaddedCollator(pad_id=0, image_size=672, teacher=True, pad_to_multiple_of=8)(samples)
    lengths = [len(s.input_ids) for s in samples]
    width = -(-max(lengths) // 8) * 8
    assert batch["input_ids"].shape == (5, width) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["attention_mask"].dtype == batch["attention_mask"].bool().dtype
    for i, s in enumerate(samples):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == s.input_ids.tolist()
        assert batch["labels"][i, :n].tolist() == s.labels.tolist()
        assert (batch["input_ids"][i, n:] == 0).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert int(batch["attention_mask"][i].sum()) == n
        mask = batch["pixel_mask"][i].numpy()
        pixels = batch["pixel_values"][i].numpy().transpose(1, 2, 0)
        if s.image is None:  # text-only row: background canvas, empty mask
            assert mask.sum() == 0 and (pixels == BG).all()
            assert batch["teacher_pixel_mask"][i].sum() == 0
        else:
            box = s.image.geometry.eve
            assert mask.sum() == box.width * box.height
            np.testing.assert_array_equal(pixels[box.y0 : box.y1, box.x0 : box.x1], s.image.eve_band)
            t = s.image.geometry.teacher
            assert int(batch["teacher_pixel_mask"][i].sum()) == t.width * t.height
    assert batch["pixel_values"].shape == (5, 3, 672, 672) and batch["teacher_pixel_values"].shape == (5, 3, 336, 336)
    stats = batch["meta"]["stats"]
    assert batch["meta"]["keys"] == [s.key for s in samples]
    assert stats["real_tokens"] == sum(s.expanded_length for s in samples)
    assert stats["slot_tokens"] == 5 * max(s.expanded_length for s in samples)


def test_pack_first_fit():
    assert pack_first_fit([5, 3, 8, 2, 7], 10) == [[2, 3], [4, 1], [0]]
    with pytest.raises(ValueError):
        pack_first_fit([11], 10)


def test_pack_balanced_spreads_the_same_rows_evenly():
    assert pack_first_fit([8, 2, 2, 2], 10) == [[0, 1], [2, 3]]  # rows of 10 and 4: padded to 2 x 10
    assert pack_balanced([8, 2, 2, 2], 10) == [[0], [1, 2, 3]]  # rows of 8 and 6: padded to 2 x 8
    assert pack_balanced([5, 5, 5, 5], 10) == pack_first_fit([5, 5, 5, 5], 10)  # already even
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = [int(x) for x in rng.integers(1, 700, size=int(rng.integers(1, 40)))]
        rows, first_fit = pack_balanced(lengths, 2048), pack_first_fit(lengths, 2048)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert len(rows) == len(first_fit)
        loads = [sum(lengths[i] for i in row) for row in rows]
        assert max(loads) <= 2048
        assert max(loads) <= max(sum(lengths[i] for i in row) for row in first_fit)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_keeps_every_token_and_label(photos, seed):
    samples = make_samples(photos, 12, seed=seed)
    budget = 1400
    batch = PackedCollator(pad_id=0, image_size=672, pack_length=budget, teacher=True)(samples)
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    seq, pos = batch["seq_ids"].numpy(), batch["position_ids"].numpy()
    assert (batch["attention_mask"].numpy() == (seq >= 0)).all()
    by_key = {s.key: s for s in samples}
    keys = batch["meta"]["keys"]
    assert sorted(keys) == sorted(by_key)  # every sample once
    k = 0
    image_order = []
    for r in range(ids.shape[0]):
        row_expanded = 0
        for j in range(seq[r].max() + 1):
            cols = np.nonzero(seq[r] == j)[0]
            assert (np.diff(cols) == 1).all()  # contiguous
            s = by_key[keys[k]]
            k += 1
            assert ids[r, cols].tolist() == s.input_ids.tolist()
            assert labels[r, cols].tolist() == s.labels.tolist()
            expected = np.arange(len(cols))
            if s.has_image:
                expected[s.image_pos + 1 :] += s.num_image_tokens - 1
                image_order.append(s)
            assert pos[r, cols].tolist() == expected.tolist()  # restart at 0, expanded coordinates
            row_expanded += s.expanded_length
        assert row_expanded <= budget
        pad = seq[r] < 0
        assert (ids[r, pad] == 0).all() and (labels[r, pad] == IGNORE_INDEX).all()
    assert k == len(samples)
    # one image per placeholder, in row-major order
    assert batch["pixel_values"].shape[0] == (ids == IMAGE_TOKEN_INDEX).sum() == len(image_order)
    for i, s in enumerate(image_order):
        box = s.image.geometry.eve
        got = batch["pixel_values"][i].numpy()[:, box.y0 : box.y1, box.x0 : box.x1].transpose(1, 2, 0)
        np.testing.assert_array_equal(got, s.image.eve_band)
    padded = PaddedCollator(pad_id=0, image_size=672)(samples)
    share_packed = batch["meta"]["stats"]["real_token_share"]
    assert share_packed > padded["meta"]["stats"]["real_token_share"]
    assert batch["meta"]["stats"]["real_tokens"] == padded["meta"]["stats"]["real_tokens"]


def test_packing_text_only_batch_has_no_images(photos):
    samples = make_samples(photos, 3, text_only_every=1)
    batch = PackedCollator(pad_id=0, image_size=672, pack_length=64)(samples)
    assert batch["pixel_values"].shape == (0, 3, 672, 672)
    assert batch["input_ids"].shape[0] == len(pack_balanced([len(s.input_ids) for s in samples], 64))
