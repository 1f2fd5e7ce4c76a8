"""Batch collation: processed samples -> the tensor batch of ``eve_lightning.constants`` (padded or packed).

Padded: one sample per row, right-padded with the pad id (labels IGNORE_INDEX, attention_mask False), one image
canvas per row (background and an all-zero mask for text-only rows).

Packed: samples are placed into as few rows as first-fit-decreasing needs, whose *expanded* length (image
placeholders counted as their image tokens) stays within ``pack_length``, and spread evenly over those rows
(``pack_balanced``): every row is as long as the longest, so even rows carry less padding. ``position_ids``
restart at 0 for every sample and count in expanded coordinates (the placeholder holds the position of the first
image token, the text after it continues at +num_image_tokens), ``seq_ids`` number the samples of a row (-1 on
padding); images are stacked one per placeholder in row-major order.

Text is scattered into the batch with vectorized index arithmetic; images are pasted band by band into one
uint8 numpy canvas per view (cheap strided copies), then wrapped as tensors without a copy.

Canvas sizes (``canvas``): ``fixed`` (EVE v1) is ``image_size`` x ``image_size`` whatever the batch; EVEv2's
bands sit at the top-left of a canvas sized per batch, ``square`` (the longest band side of the batch, both ways)
or ``rect`` (the batch's tallest band height x widest band width: [N, 3, H, W], the least padding). Both are whole
32 px cells; a batch without images gets a one-cell canvas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from eve_lightning.constants import BACKGROUND_RGB, IGNORE_INDEX, TEACHER_IMAGE_SIZE
from eve_lightning.data.encoding import expanded_length
from eve_lightning.data.geometry import EVEV2_CELL
from eve_lightning.data.image import PreparedImage

Canvas = Literal["fixed", "square", "rect"]
CANVASES = ("fixed", "square", "rect")


@dataclass
class ProcessedSample:
    """A tokenized, length-fitted sample with its prepared image bands.

    Attributes:
        key: sample key (``<shard url>#<key>`` in streams).
        input_ids: int64 [n] with at most one IMAGE_TOKEN_INDEX.
        labels: int64 [n].
        image_pos: index of the placeholder, -1 when text-only.
        image: prepared bands, None when text-only.
        num_image_tokens: tokens the image expands to (0 when text-only).
    """

    key: str
    input_ids: np.ndarray
    labels: np.ndarray
    image_pos: int
    image: PreparedImage | None
    num_image_tokens: int

    @property
    def expanded_length(self) -> int:
        return expanded_length(len(self.input_ids), self.num_image_tokens)

    @property
    def has_image(self) -> bool:
        return self.image is not None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def _scatter(
    flat: np.ndarray, lengths: np.ndarray, rows: np.ndarray, starts: np.ndarray, shape: tuple[int, int], fill: int
) -> np.ndarray:
    """Write concatenated sequences into a [R, L] int64 array.

    Args:
        flat: int64 [T], the sequences back to back.
        lengths: int64 [N], length of each sequence.
        rows: int64 [N], destination row of each sequence.
        starts: int64 [N], destination column of each sequence's first element.
        shape: (R, L).
        fill: value of untouched positions.

    Returns:
        int64 [R, L].
    """
    out = np.full(shape, fill, dtype=np.int64)
    if len(flat):
        within = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # [T]
        out[np.repeat(rows, lengths), np.repeat(starts, lengths) + within] = flat
    return out


def _concat(seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return (flat [T], lengths [N]) of a list of 1-D int64 arrays."""
    lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
    flat = np.concatenate(seqs) if len(seqs) else np.zeros(0, dtype=np.int64)
    return flat.astype(np.int64, copy=False), lengths


def canvas_size(images: Sequence[PreparedImage | None], canvas: Canvas, image_size: int) -> tuple[int, int]:
    """(height, width) in px of the EVE canvases of a batch (see the module docstring for ``canvas``)."""
    if canvas == "fixed":
        return image_size, image_size
    if canvas not in CANVASES:
        raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
    boxes = [p.geometry.eve for p in images if p is not None]
    height = max([EVEV2_CELL, *(b.y1 for b in boxes)])
    width = max([EVEV2_CELL, *(b.x1 for b in boxes)])
    if canvas == "square":
        height = width = max(height, width)
    return height, width


def render_views(
    images: Sequence[PreparedImage | None], view: str, side: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Paste bands onto background canvases.

    Args:
        images: one entry per canvas; None gives a background canvas with an all-zero mask.
        view: ``eve`` or ``teacher``.
        side: canvas side in px, or its (height, width).

    Returns:
        ``(pixels, mask)``: uint8 [N, 3, H, W] and uint8 [N, H, W] (H = W = side for an int).
    """
    n = len(images)
    height, width = (side, side) if isinstance(side, int) else side
    pixels = np.empty((n, 3, height, width), dtype=np.uint8)
    for c, value in enumerate(BACKGROUND_RGB):
        pixels[:, c] = value
    boxes = np.zeros((n, 4), dtype=np.int64)  # x0, y0, x1, y1 (empty box for text-only)
    for i, prep in enumerate(images):
        if prep is None:
            continue
        box = prep.geometry.eve if view == "eve" else prep.geometry.teacher
        band = prep.eve_band if view == "eve" else prep.teacher_band
        if band is None:
            raise ValueError(f"sample {i} has no {view} band")
        pixels[i, :, box.y0 : box.y1, box.x0 : box.x1] = band.transpose(2, 0, 1)  # [3, h, w]
        boxes[i] = (box.x0, box.y0, box.x1, box.y1)
    rows, cols = np.arange(height), np.arange(width)
    rows_in = (rows[None] >= boxes[:, 1:2]) & (rows[None] < boxes[:, 3:4])  # [N, H]
    cols_in = (cols[None] >= boxes[:, 0:1]) & (cols[None] < boxes[:, 2:3])  # [N, W]
    mask = (rows_in[:, :, None] & cols_in[:, None, :]).view(np.uint8)  # [N, H, W]
    return pixels, mask


class _CollatorBase:
    def __init__(
        self,
        pad_id: int,
        image_size: int,
        teacher: bool = False,
        pad_to_multiple_of: int = 1,
        canvas: Canvas = "fixed",
    ) -> None:
        if canvas not in CANVASES:
            raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
        if teacher and canvas != "fixed":
            raise ValueError("the teacher view needs the fixed EVE v1 canvas (canvas='fixed')")
        self.pad_id = pad_id
        self.image_size = image_size
        self.teacher = teacher
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.canvas = canvas

    def _images(self, batch: dict[str, Any], images: Sequence[PreparedImage | None]) -> None:
        size = canvas_size(images, self.canvas, self.image_size)
        pixels, mask = render_views(images, "eve", size)
        batch["pixel_values"] = torch.from_numpy(pixels)  # [N, 3, H, W] uint8 (H = W = S for v1)
        batch["pixel_mask"] = torch.from_numpy(mask)  # [N, H, W] uint8
        if self.teacher:
            t_pixels, t_mask = render_views(images, "teacher", TEACHER_IMAGE_SIZE)
            batch["teacher_pixel_values"] = torch.from_numpy(t_pixels)  # [N, 3, 336, 336]
            batch["teacher_pixel_mask"] = torch.from_numpy(t_mask)  # [N, 336, 336]

    @staticmethod
    def _meta(samples: Sequence[ProcessedSample], rows: int, row_tokens: int) -> dict[str, Any]:
        real = sum(s.expanded_length for s in samples)
        slots = rows * row_tokens
        stats = {
            "samples": float(len(samples)),
            "image_samples": float(sum(s.has_image for s in samples)),
            "label_tokens": float(sum(int((s.labels != IGNORE_INDEX).sum()) for s in samples)),
            "real_tokens": float(real),
            "slot_tokens": float(slots),
            "real_token_share": real / slots if slots else 0.0,
        }
        return {"keys": [s.key for s in samples], "stats": stats}


class PaddedCollator(_CollatorBase):
    """One sample per row, right padding (the original layout).

    Args:
        pad_id: id written into padding positions of ``input_ids``.
        image_size: EVE canvas side S (``canvas="fixed"``).
        teacher: also emit the 336 px teacher view.
        pad_to_multiple_of: round the id tensor width up (the model cuts its rows to the longest real row after
            image expansion, so this does not change the decoder's shapes).
        canvas: ``fixed`` (EVE v1), ``square`` or ``rect`` (EVEv2, sized per batch; see the module docstring).
    """

    def __call__(self, samples: Sequence[ProcessedSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        b = len(samples)
        ids, lengths = _concat([s.input_ids for s in samples])
        labs, _ = _concat([s.labels for s in samples])
        width = _round_up(int(lengths.max()), self.pad_to_multiple_of)
        rows = np.arange(b)
        starts = np.zeros(b, dtype=np.int64)
        input_ids = _scatter(ids, lengths, rows, starts, (b, width), self.pad_id)  # [B, L]
        labels = _scatter(labs, lengths, rows, starts, (b, width), IGNORE_INDEX)  # [B, L]
        attention = np.arange(width)[None] < lengths[:, None]  # [B, L]
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention),
        }
        self._images(batch, [s.image for s in samples])
        batch["meta"] = self._meta(samples, b, max(s.expanded_length for s in samples))
        return batch


def pack_first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items to rows first-fit-decreasing.

    Args:
        lengths: item lengths, each <= capacity.
        capacity: row capacity.

    Returns:
        Rows as lists of item indices (longest first within the placement order).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"item of length {lengths[i]} exceeds the row capacity {capacity}")
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def pack_balanced(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items to as many rows as first-fit-decreasing needs, with the longest row as short as possible.

    The rows of a packed batch are padded to the longest one. First-fit fills rows to the brim and leaves the last
    one short, so the padding is almost a whole row; placing each item (longest first) on the least-loaded row
    spreads the same items evenly over the same number of rows. Falls back to first-fit when that does not fit
    the capacity or is not shorter.

    Args:
        lengths: item lengths, each <= capacity.
        capacity: row capacity.

    Returns:
        Rows as lists of item indices.
    """
    first_fit = pack_first_fit(lengths, capacity)
    loads = [0] * len(first_fit)
    rows: list[list[int]] = [[] for _ in first_fit]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(len(rows)), key=lambda r: (loads[r], r))
        if loads[r] + lengths[i] > capacity:
            return first_fit
        rows[r].append(i)
        loads[r] += lengths[i]
    longest_first_fit = max(sum(lengths[i] for i in row) for row in first_fit)
    return rows if max(loads) < longest_first_fit else first_fit


class PackedCollator(_CollatorBase):
    """Several samples per row up to ``pack_length`` expanded tokens (see module docstring for the keys).

    Args:
        pad_id: id written into padding positions of ``input_ids``.
        image_size: EVE canvas side S.
        pack_length: row budget in expanded tokens (image placeholders count as their image tokens).
        teacher: also emit the 336 px teacher view.
        pad_to_multiple_of: round the row length up.
        packer: assigns samples to rows from their expanded lengths (``pack_balanced``; ``pack_first_fit`` fills
            rows to the brim and is what ``bench.packing`` compares against).
        canvas: ``fixed`` (EVE v1), ``square`` or ``rect`` (EVEv2, sized per batch; see the module docstring).
    """

    def __init__(
        self,
        pad_id: int,
        image_size: int,
        pack_length: int,
        teacher: bool = False,
        pad_to_multiple_of: int = 1,
        packer: Callable[[Sequence[int], int], list[list[int]]] = pack_balanced,
        canvas: Canvas = "fixed",
    ) -> None:
        super().__init__(pad_id, image_size, teacher, pad_to_multiple_of, canvas)
        self.pack_length = pack_length
        self.packer = packer

    def __call__(self, samples: Sequence[ProcessedSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        packs = self.packer([s.expanded_length for s in samples], self.pack_length)
        ordered = [samples[i] for row in packs for i in row]  # row-major sample order
        counts = np.array([len(r) for r in packs], dtype=np.int64)  # [R]
        row_of = np.repeat(np.arange(len(packs)), counts)  # [N]
        ids, lengths = _concat([s.input_ids for s in ordered])  # [T], [N]
        labs, _ = _concat([s.labels for s in ordered])
        flat_start = np.cumsum(lengths) - lengths  # [N] start of each sample in the flat arrays
        first = np.cumsum(counts) - counts  # [R] first sample of each row
        starts = flat_start - flat_start[first][row_of]  # [N] start column within its row
        row_len = np.bincount(row_of, weights=lengths, minlength=len(packs)).astype(np.int64)  # [R]
        shape = (len(packs), _round_up(int(row_len.max()), self.pad_to_multiple_of))
        input_ids = _scatter(ids, lengths, row_of, starts, shape, self.pad_id)  # [R, L]
        labels = _scatter(labs, lengths, row_of, starts, shape, IGNORE_INDEX)  # [R, L]
        # Positions in expanded coordinates: tokens after the placeholder shift by (image tokens - 1).
        within = np.arange(len(ids)) - np.repeat(flat_start, lengths)  # [T]
        image_pos = np.array([s.image_pos for s in ordered], dtype=np.int64)  # [N], -1 when text-only
        shift = np.array([max(s.num_image_tokens - 1, 0) for s in ordered], dtype=np.int64)  # [N]
        positions = within + np.repeat(shift, lengths) * (within > np.repeat(image_pos, lengths))  # [T]
        position_ids = _scatter(positions, lengths, row_of, starts, shape, 0)  # [R, L]
        seq_index = np.repeat(np.arange(len(ordered)) - first[row_of], lengths)  # [T] sample index in its row
        seq_ids = _scatter(seq_index, lengths, row_of, starts, shape, -1)  # [R, L]
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(seq_ids >= 0),
            "position_ids": torch.from_numpy(position_ids),
            "seq_ids": torch.from_numpy(seq_ids),
        }
        self._images(batch, [s.image for s in ordered if s.has_image])
        expanded_rows = np.bincount(row_of, weights=[s.expanded_length for s in ordered], minlength=len(packs))
        batch["meta"] = self._meta(ordered, len(packs), int(expanded_rows.max()))
        return batch
