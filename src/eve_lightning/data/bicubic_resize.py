"""Bicubic resizing of drawn pictures, byte for byte as Pillow's, run only where the picture is not plain.

``resize_bicubic`` gives what ``image.resize(size, Image.Resampling.BICUBIC)`` gives for the demo set's pictures
(``data.synthetic_shapes``): Pillow's own separable passes, but each pass only on windows around the shapes (whose
start keeps Pillow's filter phase), or from the weights Pillow would use (``_pillow_taps``, checked against Pillow
for every size pair) where a shape's rows are runs of one colour. A plain background resizes to itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from eve_lightning.data.png_encoder import Box, pixel_words, union_box

if TYPE_CHECKING:
    from eve_lightning.data.synthetic_shapes import _Canvas

_BICUBIC = Image.Resampling.BICUBIC
_RESIZE_ORDERS: dict[tuple[int, int, int, int], str | None] = {}  # (w, h, w2, h2) -> "hv", "vh" or None


def _plain_bbox(image: Image.Image, colour: tuple[int, ...] | int) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) around the pixels of ``image`` that are not ``colour``; None when all are."""
    bands = colour if isinstance(colour, tuple) else (colour,)
    return image.point([int(v != c) for c in bands for v in range(256)]).getbbox()


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), computed operation for operation as its C code does."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _pillow_taps(size: int, new_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The taps of Pillow's 8-bit bicubic pass from ``size`` to ``new_size`` px (``precompute_coeffs``).

    Returns each output pixel's first input pixel and tap count (int64 [new_size]) and its fixed-point weights
    (int64 [new_size, ksize], ``normalize_coeffs_8bpc``: 22 fractional bits, rounded half away from zero). The
    doubles are computed in the C code's order of operations, so they are its doubles.
    """
    scale = size / new_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    centre = (np.arange(new_size) + 0.5) * scale  # [new_size]
    first = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), size) - first
    taps = np.arange(ksize)  # [ksize]
    weights = _bicubic(((taps + first[:, None]) - centre[:, None] + 0.5) * (1.0 / filterscale))  # [new_size, ksize]
    weights = np.where(taps < count[:, None], weights, 0.0)
    total = np.zeros(new_size)
    for k in range(ksize):  # summed in tap order, as the C loop sums them
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    scaled = weights * float(1 << 22)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    return first, count, fixed


@dataclass(frozen=True)
class _Pass:
    """One axis of Pillow's bicubic resize, from ``size`` to ``new_size`` px, and how to run it on a window.

    Pillow computes each output pixel from its taps (``_pillow_taps``). ``period`` input px map to ``new_period``
    output px (the reduced ratio of the sizes), so two outputs ``new_period`` apart usually have the same weights,
    their taps ``period`` apart; ``kind`` numbers the outputs so that two outputs a whole number of periods apart
    have the same kind exactly when their weights and (shifted) taps are the same.
    """

    size: int
    new_size: int
    period: int
    new_period: int
    first: np.ndarray  # [new_size] first tap of each output
    stop: np.ndarray  # [new_size] one past its last tap
    weights: np.ndarray  # [new_size, ksize] fixed-point weights of the taps
    cumulative: np.ndarray  # [new_size, ksize + 1] sums of the first j weights of each output
    spread: int  # the most outputs with a tap at one input pixel, plus one
    kind: np.ndarray  # [new_size]
    breaks: np.ndarray  # the outputs i >= new_period of another kind than output i - new_period, ascending

    def window(self, start: int, stop: int) -> _Window | None:
        """Where to run this pass when only input pixels [start, stop) differ from the plain colour.

        Outputs whose taps all read plain pixels are plain. The others, [o0, o1), are computed by Pillow on an input
        crop [i0, i1) resized to ``(i1 - i0) * new_period / period`` px: the same ratio, so the same double scale,
        and its output ``j`` has the weights of output ``j + j0`` here with taps shifted by ``i0`` wherever the two
        have the same ``kind`` (``i0 = m * period``, ``j0 = m * new_period``). Where they differ (a rounding that
        breaks the pattern, or an output of the crop clipped at its start), the output is listed in ``exact``, to be
        computed from the weights here. The crop ends past every tap of [o0, o1) (or at the end of the axis), so its end
        changes none of them. None: no output changes.
        """
        o0, o1 = self.reach(start, stop)
        if o0 >= o1:
            return None
        p, q = self.period, self.new_period
        end = min(self.size, -(-int(self.stop[o1 - 1]) // p) * p)
        m = self._shift(o0, o1)
        exact = o0 + np.flatnonzero(self.kind[o0:o1] != self.kind[o0 - m * q : o1 - m * q])
        return _Window(m * p, end, m * q, o0, o1, (end - m * p) * q // p, exact)

    def reach(self, start: int, stop: int) -> tuple[int, int]:
        """The outputs [o0, o1) with a tap in input pixels [start, stop) (o0 >= o1: none)."""
        o0 = int(np.searchsorted(self.stop, start, side="right"))  # the first output with a tap at >= start
        o1 = int(np.searchsorted(self.first, stop, side="left"))  # past the last with a tap at < stop
        return o0, o1

    def _shift(self, o0: int, o1: int) -> int:
        """The largest m (up to the first tap of o0) that leaves at most ``_EXACT_OUTPUTS`` outputs of [o0, o1) apart.

        Shifted by m periods, output i reads as output i - m * new_period unless the pattern breaks in between: at
        a break b (``breaks``) the outputs b, b + new_period, ... differ from those before b. So the outputs left
        apart are those i >= b with i = b (mod new_period) and i - m * new_period < b; for a break whose first such
        output in [o0, o1) is d periods after b, min(max(m - d, 0), the count of such outputs) of them.
        """
        q = self.new_period
        late = []  # (d, count) per break that outputs in [o0, o1) follow
        for b in self.breaks.tolist():
            if b >= o1:
                break
            i = max(b, o0) + (b - max(b, o0)) % q  # the first output of the break's phase, from max(b, o0) on
            if i < o1:
                late.append(((i - b) // q, (o1 - 1 - i) // q + 1))
        m = min(o0 // q, int(self.first[o0]) // self.period)  # the crop holds every tap of the window's outputs
        while m > 0 and sum(min(max(m - d, 0), count) for d, count in late) > _EXACT_OUTPUTS:
            m -= 1
        return m

    def exact(self, pixels: np.ndarray, out: int) -> np.ndarray:
        """Output ``out`` of this pass from ``pixels`` [lines, taps, 3] (uint8, its taps): uint8 [lines, 3]."""
        total = np.full(pixels.shape[::2], 1 << 21, np.int64)  # [lines, 3]: Pillow's rounding, then the taps
        for k in range(pixels.shape[1]):
            total += pixels[:, k].astype(np.int64) * int(self.weights[out, k])
        return np.clip(total >> 22, 0, 255).astype(np.uint8)


_EXACT_OUTPUTS = 8  # most outputs of a window computed apart, in numpy, before a window with a smaller shift


@dataclass(frozen=True)
class _Window:
    """Input pixels [i0, i1) resized to ``size`` px: outputs [o0, o1) at [o0 - j0, o1 - j0), but for ``exact``."""

    i0: int
    i1: int
    j0: int
    o0: int
    o1: int
    size: int
    exact: np.ndarray


@functools.lru_cache(maxsize=64)
def _bicubic_pass(size: int, new_size: int) -> _Pass:
    """The ``_Pass`` from ``size`` to ``new_size`` px (tables computed once per pair of sizes)."""
    first, count, fixed = _pillow_taps(size, new_size)
    g = math.gcd(size, new_size)
    p, q = size // g, new_size // g
    out = np.arange(new_size)
    key = np.column_stack([out % q, first - (out // q) * p, count, fixed])  # [new_size, 3 + ksize]
    kind = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)
    breaks = q + np.flatnonzero(kind[q:] != kind[:-q])
    cumulative = np.concatenate([np.zeros((new_size, 1), np.int64), np.cumsum(fixed, 1)], 1)
    readers = np.bincount(np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    spread = int(readers.max()) + 1  # [size] outputs reading each input pixel: the most, and one more
    return _Pass(size, new_size, p, q, first, first + count, fixed, cumulative, spread, kind, breaks)


def _run_pass(image: Image.Image, axis: int, step: _Pass, window: _Window) -> tuple[Image.Image, int]:
    """Pillow's pass ``step`` along ``axis`` (0: x, 1: y) of ``image``; its outputs [o0, o1) start at the offset.

    ``image`` covers the window's input crop [i0, i1) along ``axis``; the outputs in ``window.exact`` are computed
    from ``step``'s own weights (``_Pass.exact``).
    """
    across = image.size[1 - axis]
    out = image.resize((window.size, across) if axis == 0 else (across, window.size), _BICUBIC)
    for o in window.exact.tolist():
        a, b = int(step.first[o]) - window.i0, int(step.stop[o]) - window.i0
        words = np.frombuffer(pixel_words(image, (a, 0, b, across) if axis == 0 else (0, a, across, b)), np.uint32)
        taps = words.reshape((across, b - a) if axis == 0 else (b - a, across)).view(np.uint8)  # [.., .., 4]
        taps = taps.reshape(across, b - a, 4) if axis == 0 else taps.reshape(b - a, across, 4).transpose(1, 0, 2)
        line = step.exact(taps[..., :3], o)  # [across, 3]
        size, where = ((1, across), (o - window.j0, 0)) if axis == 0 else ((across, 1), (0, o - window.j0))
        out.paste(Image.frombuffer("RGB", size, line.tobytes(), "raw", "RGB", 0, 1), where)
    return out, window.o0 - window.j0


def _footprint(box: Box, across: _Pass | None, down: _Pass | None) -> Box:
    """The outputs (x0, y0, x1, y1) of a resize that read a pixel of ``box`` (None: no pass along that axis)."""
    x0, y0, x1, y1 = box
    if across is not None:
        x0, x1 = across.reach(x0, x1)
    if down is not None:
        y0, y1 = down.reach(y0, y1)
    return x0, y0, x1, y1


def _apart(boxes: Sequence[Box], across: _Pass | None, down: _Pass | None) -> list[Box]:
    """The boxes merged until no two have overlapping footprints (``_footprint``); empty boxes dropped.

    Outside every box the picture is plain. An output then reads the pixels of at most one merged box, so each box
    can be resized on its own, the rest of the output plain.
    """
    groups = [b for b in boxes if b[0] < b[2] and b[1] < b[3]]
    while True:
        feet = [_footprint(b, across, down) for b in groups]
        pair = next(((i, j) for i in range(len(feet)) for j in range(i + 1, len(feet))
                     if max(feet[i][0], feet[j][0]) < min(feet[i][2], feet[j][2])
                     and max(feet[i][1], feet[j][1]) < min(feet[i][3], feet[j][3])), None)  # fmt: skip
        if pair is None:
            return groups
        groups = [b for k, b in enumerate(groups) if k not in pair] + [union_box([groups[pair[0]], groups[pair[1]]])]


def _resize_box(
    image: Image.Image, box: Box, plain: tuple[int, ...], across: _Pass | None, down: _Pass | None
) -> tuple[Image.Image | None, tuple[int, int]]:
    """The outputs of a resize (horizontal pass first) that read ``box``, and where they go; the rest is plain.

    The horizontal pass runs on the box's rows, the vertical pass on the columns that changed; each runs on the
    window of its axis that gives Pillow's pixels there (``_Pass.window``). None: no output.
    """
    x0, y0, x1, y1 = box
    if across is None:
        band, skip, left, right = image.crop(box), 0, x0, x1
    else:
        cols = across.window(x0, x1)
        if cols is None:
            return None, (0, 0)
        band, skip = _run_pass(image.crop((cols.i0, y0, cols.i1, y1)), 0, across, cols)
        left, right = cols.o0, cols.o1
    if down is None:
        return band.crop((skip, 0, skip + right - left, y1 - y0)), (left, y0)
    rows = down.window(y0, y1)
    if rows is None:
        return None, (0, 0)
    strip = Image.new(image.mode, (right - left, rows.i1 - rows.i0), plain)  # the band's columns, plain around it
    strip.paste(band, (-skip, y0 - rows.i0))  # the band's outputs [left, right) only (the rest falls outside)
    cols_out, skip = _run_pass(strip, 1, down, rows)
    return cols_out.crop((0, skip, right - left, skip + rows.o1 - rows.o0)), (left, rows.o0)


def _resize_hv(
    image: Image.Image,
    size: tuple[int, int],
    plain: tuple[int, ...],
    boxes: Sequence[Box] | None,
    canvas: _Canvas | None = None,
) -> Image.Image:
    """Pillow's bicubic resize, horizontal pass first, run only around the pixels of ``image`` that are not ``plain``.

    ``boxes`` hold every pixel of another colour than ``plain`` (None: one box found from the pixels). A pass treats
    each row (column) on its own and keeps a plain one plain, so each group of boxes apart (``_apart``) is resized
    on its own and the rest of the picture is ``plain`` (a new picture, or a lent ``canvas``). A group whose rows
    are each one run of one colour (a shape) has its horizontal pass computed from the runs (``_resize_runs``; a
    square's vertical pass too, ``_resize_solid``); any other goes through Pillow's passes (``_resize_box``).
    """
    (w, h), (w2, h2) = image.size, size
    if boxes is None:
        found = _plain_bbox(image, plain)
        boxes = [] if found is None else [found]
    across = _bicubic_pass(w, w2) if w2 != w else None
    down = _bicubic_pass(h, h2) if h2 != h else None
    out = Image.new(image.mode, size, plain) if canvas is None else canvas.lend(size, plain)
    word = _plain_word(plain)
    for box in _apart(boxes, across, down):
        x0, y0, x1, y1 = box
        words = np.frombuffer(pixel_words(image, box), np.uint32).reshape(y1 - y0, x1 - x0)
        runs = _row_runs(words, word)
        rect = None if runs is None else _rectangle(box, runs)
        if runs is None:  # not one run of one colour per row: Pillow's passes
            piece, at = _resize_box(image, box, plain, across, down)
        elif rect is not None:  # a square
            piece, at = _resize_solid(rect, runs.colour, plain, across, down)
        else:  # a circle, a triangle, a diamond
            piece, at = _resize_runs(box, words, runs, word, across, down)
        if piece is not None:
            out.paste(piece, at)
            if canvas is not None:
                canvas.mark((at[0], at[1], at[0] + piece.size[0], at[1] + piece.size[1]))
    return out


@functools.lru_cache(maxsize=64)
def _plain_word(plain: tuple[int, ...]) -> int:
    """A pixel of colour ``plain`` as ``_pixel_words`` reads it."""
    return int(np.frombuffer(Image.new("RGB", (1, 1), plain).tobytes("raw", "RGBX"), np.uint32)[0])


@dataclass(frozen=True)
class _Runs:
    """Rows that are plain but for one run of one colour each: the run of row r is columns [a[r], b[r])."""

    colour: int  # the run's pixel, as a word (``_pixel_words``)
    a: np.ndarray  # int64 [rows]
    b: np.ndarray  # int64 [rows]: a[r] where the row is plain


def _row_runs(words: np.ndarray, plain: int) -> _Runs | None:
    """The runs of the rows of ``words`` (uint32 [rows, cols]) if each row is ``plain`` but for one run of one colour.

    A convex shape of one colour drawn on a plain picture has such rows. None: some row is not.
    """
    other = words != plain  # [rows, cols]
    count = other.sum(1)  # [rows]
    a = other.argmax(1)  # the first pixel not plain (0 when none)
    b = np.where(count > 0, words.shape[1] - other[:, ::-1].argmax(1), a)  # one past the last
    if not (b - a == count).all():  # a plain pixel inside a run
        return None
    filled = np.flatnonzero(count)
    if not len(filled):
        return _Runs(plain, a, b)
    colour = words[filled[0], a[filled[0]]]
    if not ((words == colour).sum(1) == count).all():  # a pixel of another colour
        return None
    return _Runs(int(colour), a, b)


def _rectangle(box: Box, runs: _Runs) -> Box | None:
    """The rectangle the runs fill, if they fill one (a square's: the same run in a block of rows); else None."""
    filled = np.flatnonzero(runs.b > runs.a)
    if not len(filled) or filled[-1] - filled[0] + 1 != len(filled):
        return None
    a, b = runs.a[filled], runs.b[filled]
    if not ((a == a[0]).all() and (b == b[0]).all()):
        return None
    return box[0] + int(a[0]), box[1] + int(filled[0]), box[0] + int(b[0]), box[1] + int(filled[-1]) + 1


def _word_bytes(word: int) -> np.ndarray:
    """The R, G, B bytes of a word (int64 [3])."""
    return np.frombuffer(np.uint32(word).tobytes(), np.uint8)[:3].astype(np.int64)


def _words_image(words: np.ndarray) -> Image.Image:
    """An RGB picture of ``words`` (uint32 [rows, cols], as ``_pixel_words`` reads pixels)."""
    rows, cols = words.shape
    return Image.frombytes("RGB", (cols, rows), np.ascontiguousarray(words), "raw", "RGBX")  # RGB, not a mapped RGBX


def _runs_pass(step: _Pass, start: int, stop: int, x0: int, runs: _Runs, plain: int) -> tuple[np.ndarray, int]:
    """Pillow's pass ``step`` of rows plain but for runs [x0 + a, x0 + b) of one colour, where it changes them.

    Returns the outputs reading input pixels [start, stop), as words (uint32 [rows, o1 - o0]), and o0.
    An output whose taps all fall in the run has its colour, one whose taps all miss it is plain (Pillow keeps a
    plain row plain, for any grey level). The outputs near an end of a run, ``_Pass.spread`` from the first whose
    taps reach it, are computed from the sums of their weights on and off the run (``_Pass.cumulative``), in
    Pillow's arithmetic (which gives the run's colour or the plain one where the taps fall all in or all out).
    """
    o0, o1 = step.reach(start, stop)
    n, rows = o1 - o0, len(runs.a)
    lo, hi = x0 + runs.a, x0 + runs.b  # [rows]: each run in the picture
    # the first output with every tap at >= lo and the first with a tap at >= lo; past the last with every tap < hi
    inside_lo, reach_lo = np.searchsorted(step.first[o0:o1], lo), np.searchsorted(step.stop[o0:o1], lo, "right")
    inside_hi = np.maximum(np.searchsorted(step.stop[o0:o1], hi, "right"), inside_lo)
    lengths = np.stack([inside_lo, inside_hi - inside_lo, n - inside_hi], 1).reshape(-1)  # plain, run, plain
    colours = np.broadcast_to(np.array([plain, runs.colour, plain], np.uint32), (rows, 3)).reshape(-1)
    out = np.repeat(colours, lengths).reshape(rows, n)
    ends = np.stack([reach_lo, inside_hi], 1)[..., None] + np.arange(step.spread)  # [rows, 2, spread]: near the ends
    ends = np.minimum(ends, n - 1)
    o = o0 + ends
    ksize = step.weights.shape[1]
    tap = step.first[o]  # [rows, 2, spread]
    upto = np.minimum(np.maximum(hi[:, None, None] - tap, 0), ksize)
    past = np.minimum(np.maximum(lo[:, None, None] - tap, 0), ksize)
    on = step.cumulative[o, upto] - step.cumulative[o, past]  # the weights on the run
    total = (
        (1 << 21)
        + on[..., None] * _word_bytes(runs.colour)
        + (step.cumulative[o, ksize] - on)[..., None] * _word_bytes(plain)
    )
    pixel = np.minimum(np.maximum(total >> 22, 0), 255).astype(np.uint32)  # [rows, 2, spread, 3]
    out[np.arange(rows)[:, None, None], ends] = pixel[..., 0] | (pixel[..., 1] << 8) | (pixel[..., 2] << 16)
    return out, o0


def _resize_runs(
    box: Box, words: np.ndarray, runs: _Runs, plain: int, across: _Pass | None, down: _Pass | None
) -> tuple[Image.Image | None, tuple[int, int]]:
    """``_resize_box`` for a box whose rows are runs (``words``: its pixels).

    The horizontal pass comes from the runs (``_runs_pass``), the vertical one from Pillow on the window of the
    columns (``_Pass.window``).
    """
    x0, y0, x1, y1 = box
    if across is None:
        band, left = words, x0
    else:
        band, left = _runs_pass(across, x0, x1, x0, runs, plain)
    if down is None:
        return _words_image(band), (left, y0)
    rows = down.window(y0, y1)
    if rows is None or not band.shape[1]:
        return None, (0, 0)
    strip = np.full((rows.i1 - rows.i0, band.shape[1]), plain, np.uint32)  # the band's columns, plain around it
    strip[y0 - rows.i0 : y1 - rows.i0] = band
    done, skip = _run_pass(_words_image(strip), 1, down, rows)
    return done.crop((0, skip, band.shape[1], skip + rows.o1 - rows.o0)), (left, rows.o0)


def _run_weights(step: _Pass | None, start: int, stop: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """One axis of a resize of a picture plain but for a run of input pixels [start, stop) of one colour.

    Returns the outputs [o0, o1) that read the run and, for each, the sum of its weights on the run and off it
    (int64 [o1 - o0] each): the output is then (2^21 + inside x colour + outside x plain) >> 22, per channel, as
    Pillow's pass computes it. Without a pass (``step`` None) an output is its input pixel.
    """
    if step is None:
        return start, stop, np.full(stop - start, 1 << 22, np.int64), np.zeros(stop - start, np.int64)
    o0, o1 = step.reach(start, stop)
    weights = step.weights[o0:o1]  # [n, ksize]: zero past each output's taps
    taps = step.first[o0:o1, None] + np.arange(weights.shape[1])  # [n, ksize]
    inside = np.where((taps >= start) & (taps < stop), weights, 0).sum(1)
    return o0, o1, inside, weights.sum(1) - inside


def _mix(inside: np.ndarray, outside: np.ndarray, colours: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Pillow's 8-bit outputs of taps summing to ``inside`` on ``colours`` and ``outside`` on ``plain``, as words.

    ``inside``, ``outside``: int64 [n]; ``colours``: int64 [u, 3]. Returns uint32 [n, u]: one pixel per word, as
    ``_pixel_words`` reads them (R, G, B, pad).
    """
    total = (1 << 21) + inside[:, None, None] * colours + outside[:, None, None] * plain  # [n, u, 3]
    channels = np.clip(total >> 22, 0, 255).astype(np.uint32)
    return channels[..., 0] | (channels[..., 1] << 8) | (channels[..., 2] << 16)


def _resize_solid(
    rect: Box, colour: int, plain: tuple[int, ...], across: _Pass | None, down: _Pass | None
) -> tuple[Image.Image, tuple[int, int]]:
    """``_resize_box`` for one solid rectangle ``rect`` of ``colour`` (a word) on a plain picture.

    Every row through the rectangle is the same run of its colour, so the horizontal pass is one row of outputs
    (``_run_weights``); a column of that pass is plain but for the rectangle's rows, all of one colour, so the
    vertical pass is computed once per distinct colour of that row. Both from Pillow's weights, in its arithmetic.
    """
    x0, y0, x1, y1 = rect
    background = np.asarray(plain, np.int64)
    left, _, inside, outside = _run_weights(across, x0, x1)
    row = _mix(inside, outside, _word_bytes(colour)[None], background)[:, 0]  # [n] words: the rectangle's rows
    words, which = np.unique(row, return_inverse=True)  # [u] distinct colours; each output column's among them
    colours = words.view(np.uint8).reshape(-1, 4)[:, :3].astype(np.int64)  # [u, 3]
    top, _, inside, outside = _run_weights(down, y0, y1)
    block = _mix(inside, outside, colours, background)[:, which.reshape(-1)]  # [rows out, n] words
    return _words_image(block), (left, top)


def _resize_in_order(
    image: Image.Image,
    size: tuple[int, int],
    order: str,
    plain: tuple[int, ...] | None = None,
    boxes: Sequence[Box] | None = None,
    canvas: _Canvas | None = None,
) -> Image.Image:
    """``_resize_hv``, or for ``order`` "vh" the same steps on the transposed picture (vertical pass first).

    ``plain``: the background colour (None: the corner's, and the box found from the pixels). ``canvas``: a lent
    plain picture to draw the result on, for order "hv".
    """
    if plain is None:
        plain, boxes = image.getpixel((0, 0)), None
    if order == "hv":
        return _resize_hv(image, size, plain, boxes, canvas)
    flip = Image.Transpose.TRANSPOSE
    turned = None if boxes is None else [(b[1], b[0], b[3], b[2]) for b in boxes]
    return _resize_hv(image.transpose(flip), (size[1], size[0]), plain, turned).transpose(flip)


def _resize_order(size: tuple[int, int], target: tuple[int, int]) -> str | None:
    """The pass order ("hv" or "vh") whose fast resize gives this Pillow's bytes for these sizes; None: neither.

    Which pass Pillow runs first depends on its version and the sizes, and the two orders round differently.
    Checked once per pair of sizes: on random pictures (whole, and a patch on a plain background) and, for every
    grey level, that a plain row and column stay plain through their pass (the bands are computed alike).
    """
    key = (*size, *target)
    if key not in _RESIZE_ORDERS:
        (w, h), (w2, h2) = size, target
        rng = np.random.default_rng(0)
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        patch = Image.new("RGB", size, (250, 250, 250))
        patch.paste(noise.crop((w // 3, h // 3, w // 2, h // 2)), (w // 3, h // 3))
        levels = np.arange(256, dtype=np.uint8)
        rows = np.repeat(levels[:, None, None], 3, axis=2)  # [256, 1, 3]: row v is grey level v
        plain = all(
            np.array_equal(np.asarray(Image.fromarray(np.broadcast_to(grey, (*n, 3)).copy()).resize(m, _BICUBIC)),
                           np.broadcast_to(grey, (m[1], m[0], 3)))
            for grey, n, m in (
                (rows, (256, w), (w2, 256)),
                (rows.transpose(1, 0, 2), (h, 256), (256, h2)),
            )
        )  # fmt: skip
        order = None
        for candidate in ("hv", "vh"):
            if plain and all(
                _resize_in_order(p, target, candidate).tobytes() == p.resize(target, _BICUBIC).tobytes()
                for p in (noise, patch)
            ):
                order = candidate
                break
        _RESIZE_ORDERS[key] = order
    return _RESIZE_ORDERS[key]


def resize_bicubic(
    image: Image.Image,
    size: tuple[int, int],
    background: tuple[int, int, int] | None = None,
    box: tuple[int, int, int, int] | None = None,
    parts: Sequence[tuple[int, int, int, int]] = (),
    canvas: _Canvas | None = None,
) -> Image.Image:
    """``image.resize(size, BICUBIC)``, byte for byte, computed only around the shapes of a drawn picture.

    A drawn picture is a plain ``background`` with a few shapes inside ``box``, each inside its box of ``parts``
    (a ``Picture``'s); without them the background is the corner's colour and the box is found from the pixels.
    Only the rows and columns around the shapes go through Pillow's passes (``_resize_hv``), in the order this
    Pillow uses for these sizes (``_resize_order``). ``canvas``: a lent plain picture the result may be drawn on.
    """
    order = _resize_order(image.size, size) if image.size != size else None
    if order is None:
        return image.resize(size, _BICUBIC)
    boxes = (list(parts) or [box]) if background is not None and box is not None else None
    return _resize_in_order(image, size, order, background, boxes, canvas if background is not None else None)
