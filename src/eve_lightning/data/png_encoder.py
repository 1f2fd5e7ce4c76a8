"""PNG files of drawn pictures, byte for byte as Pillow writes them, for a fraction of the work.

The demo set (``data.synthetic_shapes``) stores every picture as a PNG at zlib level ``PNG_LEVEL``. Its pictures
are a plain background with a few shapes, so ``PngEncoder`` filters only the rows and columns around the shapes
(the rest of a row filters the same way every time), compresses the plain rows above the first shape once for every
picture of the same size and background, and writes the chunks Pillow writes: the same bytes as
``image.save(..., format="PNG", compress_level=PNG_LEVEL)``, which the tests check on drawn pictures and on
photographs.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

PNG_LEVEL = 1  # zlib level of the raw pictures
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1): columns [x0, x1) x rows [y0, y1) of a picture


def union_box(boxes: Sequence[Box]) -> Box:
    """The smallest box (x0, y0, x1, y1) that holds ``boxes`` (at least one)."""
    x0s, y0s, x1s, y1s = zip(*boxes)
    return min(x0s), min(y0s), max(x1s), max(y1s)


# PNG, as Pillow writes an RGB picture: a signature, IHDR, the zlib stream of the filtered rows cut into IDAT
# chunks of the encoder's buffer size, IEND. Pillow filters each row with the filter of least cost (None, Up, Sub or
# Paeth, see _filter_row) and feeds the rows to zlib (deflateInit2: level PNG_LEVEL, window 15, memLevel 9). Here
# the deflate data comes from a raw deflate stream with the same settings (the same data: the wrapper changes none
# of it) and the zlib wrapper is added around it, the Adler-32 of the filtered rows computed from their few
# nonzero bytes (_Adler32).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BUFFER = 65536  # Pillow's ImageFile.MAXBLOCK: the smallest encoder buffer, and so the IDAT chunk size
_ZLIB_HEADER = zlib.compress(b"", PNG_LEVEL)[:2]  # the zlib header of a stream at this level
_NONE, _SUB, _UP, _PAETH = 0, 1, 2, 4  # PNG filter types (Pillow tries Average only when optimizing)
_COST = np.minimum(np.arange(256), 256 - np.arange(256))  # [256]: cost of a filtered byte, |v| of v as signed
_ADLER_BASE = 65521


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data and the CRC of tag and data."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _deflater() -> Any:
    """A raw deflate compressor set up as Pillow's PNG encoder sets zlib up (its strategy: no matter at level 1)."""
    return zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, -15, 9)


@dataclass(frozen=True)
class _Adler32:
    """An Adler-32 checksum in progress (the sums a and b), advanced over mostly-zero bytes without reading them."""

    a: int = 1
    b: int = 0

    def sparse(self, length: int, positions: np.ndarray, values: np.ndarray) -> _Adler32:
        """After ``length`` more bytes, zero but for ``values`` at ``positions`` (int arrays alike, any shape)."""
        v = values.reshape(-1).astype(np.int64)
        weight = (length - positions.reshape(-1).astype(np.int64)) % _ADLER_BASE  # byte i adds v to length - i sums
        a = (self.a + int(v.sum())) % _ADLER_BASE
        b = (self.b + length * self.a + int((weight * v % _ADLER_BASE).sum())) % _ADLER_BASE
        return _Adler32(a, b)

    def plain_rows(self, rows: int, stride: int, kind: int) -> _Adler32:
        """After ``rows`` rows of ``stride`` bytes, each a filter type ``kind`` then zeros."""
        a = (self.a + kind * rows) % _ADLER_BASE
        b = (self.b + stride * (rows * self.a + kind * rows * (rows + 1) // 2)) % _ADLER_BASE
        return _Adler32(a, b)

    def digest(self) -> bytes:
        return struct.pack(">I", (self.b << 16) | self.a)


def _paeth(left: np.ndarray, above: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """The Paeth predictor of each byte from its left, upper and upper-left neighbours (arrays alike, any int)."""
    a, b, c = left.astype(np.int16), above.astype(np.int16), corner.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, corner))


def _filter_row(row: np.ndarray, above: np.ndarray) -> tuple[int, np.ndarray]:
    """Pillow's filter of one row: its type and the filtered bytes (uint8 [3 * width]).

    ``row``, ``above``: int16 [3 * width] RGB bytes of the row and of the row above it (zeros above the first
    row). Pillow costs None, then Up, Sub and Paeth (sum of ``_COST``), keeps a filter only when it costs strictly
    less than the best so far, and stops trying once the cost is 0.
    """
    left, corner = np.zeros_like(row), np.zeros_like(above)
    left[3:], corner[3:] = row[:-3], above[:-3]
    best, kind, out = int(_COST[row & 255].sum()), _NONE, row
    for k, filtered in ((_UP, row - above), (_SUB, row - left), (_PAETH, row - _paeth(left, above, corner))):
        if best == 0:
            break
        cost = int(_COST[filtered & 255].sum())
        if cost < best:
            best, kind, out = cost, k, filtered
    return kind, (out & 255).astype(np.uint8)


Window = tuple[int, int, int, int]  # (r0, r1, c0, c1): rows [r0, r1) x columns [c0, c1) of a picture


def _windows(boxes: Sequence[Box], width: int, height: int) -> list[Window]:
    """The windows whose pixels may filter to nonzero bytes, for shapes inside ``boxes`` (the rest plain).

    A box and the row and column after it (where the picture turns back plain), from row 1 on; windows that meet
    are merged, so that no pixel is in two.
    """
    wins = [(max(y0, 1), min(y1 + 1, height), x0, min(x1 + 1, width)) for x0, y0, x1, y1 in boxes]
    wins = [w for w in wins if w[0] < w[1] and w[2] < w[3]]
    while True:
        pair = next(((i, j) for i in range(len(wins)) for j in range(i + 1, len(wins))
                     if max(wins[i][0], wins[j][0]) < min(wins[i][1], wins[j][1])
                     and max(wins[i][2], wins[j][2]) < min(wins[i][3], wins[j][3])), None)  # fmt: skip
        if pair is None:
            return wins
        a, b = wins[pair[0]], wins[pair[1]]
        merged = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
        wins = [w for k, w in enumerate(wins) if k not in pair] + [merged]


def pixel_words(image: Image.Image, box: Box) -> bytes:
    """The pixels of ``box`` of an RGB picture, 4 bytes each (R, G, B, pad); zeros outside the picture.

    Read by Pillow's raw encoder straight from the picture (what ``image.crop(box).tobytes("raw", "RGBX")`` gives,
    without the copy); a box outside the picture goes through ``crop``, which pads with zeros.
    """
    x0, y0, x1, y1 = box
    if x0 >= 0 and y0 >= 0 and x1 <= image.size[0] and y1 <= image.size[1]:
        size = 4 * (x1 - x0) * (y1 - y0)
        try:
            encoder = Image._getencoder("RGB", "raw", ("RGBX", 0, 1))
            encoder.setimage(image.im, box)
            parts = []
            while True:
                _, status, data = encoder.encode(size + 16)
                parts.append(data)
                if status:
                    return b"".join(parts)
        except (AttributeError, TypeError, ValueError, SystemError):  # a Pillow without this encoder interface
            pass
    return image.crop(box).tobytes("raw", "RGBX")


@dataclass
class _PngJob:
    """What ``PngEncoder.finish`` needs of a picture, read while it exists (``PngEncoder.read``).

    ``words``: the pixels of each window with the row above and the column left of it (uint32 [n + 1, m + 1], one
    word per pixel as ``_pixel_words`` reads them); ``first``: the rows above it all are plain, their stream shared
    (``_PlainTop``); ``row0``: the first row's bytes (int16 [3 * width]) when it is not plain.
    """

    width: int
    height: int
    background: tuple[int, int, int]
    first: int
    windows: list[Window]
    words: list[np.ndarray]
    row0: np.ndarray | None

    def row(self, r: int) -> np.ndarray:
        """The bytes of row ``r`` (uint8 [3 * width]), from the background and the windows."""
        line = np.tile(np.asarray(self.background, np.uint8), self.width).reshape(self.width, 3)
        for (r0, r1, c0, c1), words in zip(self.windows, self.words):
            if r0 <= r < r1:
                line[c0:c1] = words[r - r0 + 1, 1:].view(np.uint8).reshape(-1, 4)[:, :3]
        return line.reshape(-1)


@dataclass
class _Filtered:
    """A picture's filtered rows [top, bottom) as ``_filter_jobs`` found them.

    Their filter types, and the positions (in the filtered rows from the picture's ``first`` row on) and values of
    their nonzero data bytes.
    """

    top: int
    kinds: np.ndarray  # uint8 [bottom - top]
    positions: np.ndarray  # int64 [b]
    values: np.ndarray  # uint8 [b]


def _events(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of a window that are not equal to their left, upper and upper-left neighbours alike.

    ``words``: uint32 [n + 1, m + 1], the window with the row above and the column left of it. Any other pixel
    filters to zero under Up, Sub and Paeth. Returns their row and column in the window (int64 [k]) and their
    bytes with their neighbours' (uint8 [4, 3, k]: the pixel, left, upper, upper-left; channels first).
    """
    m = words.shape[1] - 1
    changes = words[:, 1:] != words[:, :-1]  # [n + 1, m]: unlike the left neighbour
    busy = changes[1:] | changes[:-1]  # [n, m]: unlike the left one, or the upper one unlike its left one
    busy |= words[1:, 1:] != words[:-1, 1:]  # or unlike the upper neighbour
    flat = np.flatnonzero(busy)
    er, ec = np.divmod(flat, m)
    at = flat + er + m + 2  # [k]: the events' index in ``words``
    quad = words.reshape(-1).take(at - np.array([[0], [1], [m + 1], [m + 2]]))  # [4, k] words
    return er, ec, quad.view(np.uint8).reshape(4, -1, 4).transpose(0, 2, 1)[:, :3]


@dataclass
class _Events:
    """The pixels of many pictures' windows that may filter to nonzero bytes (``_events``), with their rows.

    The rows of all pictures are numbered in one run of "slots" (a picture's rows [top, bottom) after the rows of
    the pictures before it), so that one numpy operation serves them all.
    """

    job: np.ndarray  # int64 [k]: each event's picture
    slot: np.ndarray  # int64 [k]: its row's slot
    col: np.ndarray  # int64 [k]: its column in the picture
    quad: np.ndarray  # uint8 [4, 3, k]: its bytes, its left, upper and upper-left neighbours' (channels first)
    slot_job: np.ndarray  # int64 [slots]: each slot's picture
    slot_row: np.ndarray  # int64 [slots]: its row in the picture's filtered rows (from the picture's ``first`` row)
    lead: np.ndarray  # int64 [slots]: the cost of the row's first pixel
    outside: np.ndarray  # bool [slots]: the row's first pixel is outside every window (a background pixel)
    spans: list[tuple[int, int]]  # per picture: its top row and its first slot


def _gather_events(jobs: Sequence[_PngJob]) -> _Events:
    """The ``_Events`` of the windows of ``jobs``."""
    parts, leads, outs, rows, spans = [], [], [], [], []
    base = 0
    for j, job in enumerate(jobs):
        top, bottom = min(w[0] for w in job.windows), max(w[1] for w in job.windows)
        lead = np.full(bottom - top, int(_COST[list(job.background)].sum()))
        outside = np.ones(bottom - top, bool)
        for (r0, r1, c0, _), words in zip(job.windows, job.words):
            er, ec, quad = _events(words)
            parts.append((j, base + r0 - top + er, c0 + ec, quad))
            if c0 == 0:  # the window holds the first pixel of its rows
                first = words[1:, 1:2].copy().view(np.uint8)[:, :3]  # [n, 3]
                lead[r0 - top : r1 - top], outside[r0 - top : r1 - top] = _COST[first].sum(1), False
        leads.append(lead)
        outs.append(outside)
        rows.append(np.arange(top - job.first, bottom - job.first))
        spans.append((top, base))
        base += bottom - top
    return _Events(
        job=np.repeat([p[0] for p in parts], [len(p[1]) for p in parts]),
        slot=np.concatenate([p[1] for p in parts]),
        col=np.concatenate([p[2] for p in parts]),
        quad=np.concatenate([p[3] for p in parts], axis=2),
        slot_job=np.repeat(np.arange(len(jobs)), [len(lead) for lead in leads]),
        slot_row=np.concatenate(rows),
        lead=np.concatenate(leads),
        outside=np.concatenate(outs),
        spans=spans,
    )


_PICK = np.array([0, 1, 0, 0, 2])  # filter type -> its row in _filter_jobs' ``filtered`` (Up 0, Sub 1, Paeth 2)


def _choose_filters(ev: _Events, filtered: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Each slot's filter type as Pillow picks it (``_filter_row``) from the costs of its events.

    ``filtered``: uint8 [5, 3, k], each event's Up, Sub and Paeth bytes, then its own and its left neighbour's.
    The None cost of a row is width x its first pixel's cost plus, at each pixel p >= 1 unlike its left neighbour
    (a Sub byte not zero), (width - p) x the change of cost there.
    """
    n = len(ev.lead)
    distance = np.minimum(filtered, -filtered)  # [5, 3, k]: the byte costs (_COST)
    cost = distance[:, 0].astype(np.int32) + distance[:, 1] + distance[:, 2]  # [5, k]: summed over the channels
    costs = np.bincount((ev.slot + n * np.arange(3)[:, None]).reshape(-1), cost[:3].reshape(-1), 3 * n)
    costs = costs.reshape(3, n).astype(np.int64)  # [3, slots]: each row's cost under Up, Sub, Paeth
    costs[1] += np.where(ev.outside, ev.lead, 0)  # Sub of a background first pixel
    step = (ev.col > 0) & (cost[1] > 0)
    change = (cost[3] - cost[4]) * (widths[ev.job] - ev.col)  # int64: may pass 2^31 in a very wide picture
    best = np.bincount(ev.slot[step], change[step], n).astype(np.int64) + widths[ev.slot_job] * ev.lead
    kind = np.full(n, _NONE, np.uint8)
    for filter_type, cost_of in zip((_UP, _SUB, _PAETH), costs):
        better = (best > 0) & (cost_of < best)
        kind[better], best = filter_type, np.where(better, cost_of, best)
    return kind


def _filter_jobs(jobs: Sequence[_PngJob]) -> list[_Filtered]:
    """Pillow's filters of the rows of the jobs' windows, for many pictures at once.

    Every pixel outside a picture's windows, in their rows and the rows above them, is its background; only the
    pixels that ``_events`` finds are filtered, the others filter to zero but for Sub of the first pixel (a
    background pixel after nothing). Each row gets the filter Pillow picks (``_choose_filters``).
    """
    ev = _gather_events(jobs)
    widths = np.array([job.width for job in jobs])
    strides = 3 * widths + 1
    x, left, above, corner = ev.quad  # [3, k] uint8 each
    # [5, 3, k] uint8: Up, Sub and Paeth of each event (wrapping as bytes), then the pixel and its left neighbour
    filtered = np.stack([x - above, x - left, x - _paeth(left, above, corner), x, left])
    kind = _choose_filters(ev, filtered, widths)
    values = filtered[_PICK[kind[ev.slot]], :, np.arange(len(ev.slot))]  # [k, 3]: under the row's filter
    positions = (ev.slot_row[ev.slot] * strides[ev.job] + 1 + 3 * ev.col)[:, None] + np.arange(3)  # [k, 3]
    subs = np.flatnonzero((kind == _SUB) & ev.outside)  # Sub of a background first pixel: the pixel itself
    sub_job = ev.slot_job[subs]
    sub_positions = (ev.slot_row[subs] * strides[sub_job])[:, None] + np.arange(1, 4)  # [s, 3]
    sub_values = np.array([job.background for job in jobs], np.uint8)[sub_job]  # [s, 3]
    event_bounds = np.searchsorted(ev.job, np.arange(len(jobs) + 1))
    sub_bounds = np.searchsorted(sub_job, np.arange(len(jobs) + 1))
    slot_bounds = [b for _, b in ev.spans] + [len(kind)]
    out = []
    for j, (top, _) in enumerate(ev.spans):
        e, s = slice(event_bounds[j], event_bounds[j + 1]), slice(sub_bounds[j], sub_bounds[j + 1])
        out.append(_Filtered(
            top, kind[slot_bounds[j] : slot_bounds[j + 1]],
            np.concatenate([positions[e].reshape(-1), sub_positions[s].reshape(-1)]),
            np.concatenate([values[e].reshape(-1), sub_values[s].reshape(-1)]),
        ))  # fmt: skip
    return out


class _PlainTop:
    """Deflate fed the plain rows at the top of pictures of one size and background: Pillow's stream so far.

    Pictures of that size and background encoded in order of their first shape row share it: each takes a copy of
    the compressor at its first shape row (``fork``), and the plain rows above go through zlib once for them all.
    """

    def __init__(self, width: int, background: tuple[int, int, int]) -> None:
        first = np.tile(np.asarray(background, np.int16), width)  # [3 * width]: the first row, plain
        kind, data = _filter_row(first, np.zeros_like(first))
        row = bytes([kind]) + data.tobytes()
        self._deflate = _deflater()
        self._written = [self._deflate.compress(row)]
        self._plain = bytes([_plain_filter(background)]) + bytes(3 * width)  # a plain row under a plain row
        self.rows = 1
        self.adler = _Adler32().sparse(len(row), np.arange(len(row)), np.frombuffer(row, np.uint8))

    def fork(self, rows: int) -> tuple[Any, bytes, _Adler32]:
        """A compressor fed the first ``rows`` (at least ``self.rows``) rows, what it wrote, and their Adler-32."""
        if rows > self.rows:
            self._written.append(self._deflate.compress(self._plain * (rows - self.rows)))
            self.adler = self.adler.plain_rows(rows - self.rows, len(self._plain), self._plain[0])
            self.rows = rows
        return self._deflate.copy(), b"".join(self._written), self.adler


def _plain_filter(background: tuple[int, int, int]) -> int:
    """Pillow's filter of a plain row under a plain row: Up (all zero), or None when None costs 0 already (black)."""
    return _UP if any(background) else _NONE


class PngEncoder:
    """Pillow's PNG file of an RGB picture, byte for byte, filtering only around the shapes of a drawn picture.

    A picture comes with its background and the boxes around its shapes (a ``Sketch``'s). The rows outside the
    boxes are plain, and so are their filtered bytes; inside, only the pixels near an edge are filtered
    (``_filter_jobs``). ``read`` takes what that needs of a picture, ``finish`` encodes many read pictures at once
    (``encode``: one). The plain rows at the top go through zlib once per size and background while pictures come
    in order of their top shape row (``_PlainTop``); any order gives the same bytes.
    """

    def __init__(self) -> None:
        self._tops: dict[tuple[int, int, tuple[int, int, int]], _PlainTop] = {}  # of the last size and colour
        self._rows: dict[tuple[int, int], np.ndarray] = {}  # (width, height) -> zeroed filtered rows, of the last size

    def encode(
        self, image: Image.Image, background: tuple[int, int, int] | None = None,
        boxes: Sequence[Box] | None = None,
    ) -> bytes:  # fmt: skip
        """The PNG file of ``image`` (RGB); outside ``boxes`` every pixel is ``background`` (None: no boxes)."""
        return self.finish([self.read(image, background, boxes)])[0]

    @staticmethod
    def read(
        image: Image.Image, background: tuple[int, int, int] | None = None, boxes: Sequence[Box] | None = None
    ) -> _PngJob:
        """What encoding ``image`` takes from its pixels (see ``encode``)."""
        width, height = image.size
        if background is None or boxes is None:
            background, boxes = (0, 0, 0), [(0, 0, width, height)]
        boxes = [b for b in boxes if b[0] < b[2] and b[1] < b[3]]
        first = min((b[1] for b in boxes), default=height)  # the first row with a shape: plain rows above
        windows = _windows(boxes, width, height)
        words = [
            np.frombuffer(pixel_words(image, (c0 - 1, r0 - 1, c1, r1)), np.uint32).reshape(r1 - r0 + 1, c1 - c0 + 1)
            for r0, r1, c0, c1 in windows
        ]  # fmt: skip
        row0 = np.frombuffer(image.crop((0, 0, width, 1)).tobytes(), np.uint8).astype(np.int16) if first == 0 else None
        return _PngJob(width, height, tuple(background), first, windows, words, row0)

    def finish(self, jobs: Sequence[_PngJob]) -> list[bytes]:
        """The PNG files of read pictures, in order (best in order of size, background and first row)."""
        busy = [job for job in jobs if job.windows]
        filtered = dict(zip(map(id, busy), _filter_jobs(busy))) if busy else {}
        return [self._compress(job, filtered.get(id(job))) for job in jobs]

    def _compress(self, job: _PngJob, filtered: _Filtered | None) -> bytes:
        """The PNG file of a read picture from its filtered window rows."""
        width, height, first = job.width, job.height, job.first
        stride = 3 * width + 1
        deflate, written, adler = _deflater(), b"", _Adler32()
        if first > 0:  # plain rows on top: continue the shared stream
            key = (width, height, job.background)
            top = self._tops.get(key)
            if top is None or top.rows > first:
                self._tops = {key: (top := _PlainTop(width, job.background))}  # kept for this size and colour only
            deflate, written, adler = top.fork(first)
        rows = self._rows.get((width, height))
        if rows is None:
            self._rows = {(width, height): (rows := np.zeros((height, stride), np.uint8))}  # for this size only
        raw = rows[first:]  # [height - first, stride] view: the filtered rows from row first on
        raw[:, 0] = _plain_filter(job.background)
        positions, values = [], []  # the data bytes written, to checksum and to clear
        if job.row0 is not None:
            raw[0, 0], raw[0, 1:] = _filter_row(job.row0, np.zeros_like(job.row0))
            positions.append(np.arange(1, stride))
            values.append(raw[0, 1:].copy())
        if filtered is not None:
            at, data = filtered.positions, filtered.values
            raw[filtered.top - first : filtered.top - first + len(filtered.kinds), 0] = filtered.kinds
            nones = filtered.top - first + np.flatnonzero(filtered.kinds == _NONE)  # never for a drawn picture
            if len(nones):
                keep = ~np.isin(at // stride, nones)
                at, data = at[keep], data[keep]
                positions += [r * stride + 1 + np.arange(3 * width) for r in nones.tolist()]
                values += [job.row(r + first) for r in nones.tolist()]
            positions.append(at)
            values.append(data)
        flat = raw.reshape(-1)
        for at, data in zip(positions, values):
            flat[at] = data
        at = np.concatenate([np.arange(len(raw)) * stride, *positions])
        adler = adler.sparse(raw.size, at, np.concatenate([raw[:, 0], *values]))
        stream = _ZLIB_HEADER + written + deflate.compress(raw) + deflate.flush() + adler.digest()
        flat[at[len(raw) :]] = 0  # clear the data bytes for the next picture of this size
        size = max(_PNG_BUFFER, 4 * width)  # Pillow's encoder buffer (ImageFile._save)
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, adaptive, no interlace
        idat = b"".join(_png_chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size))
        return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")
