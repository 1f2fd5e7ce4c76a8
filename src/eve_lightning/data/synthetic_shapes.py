"""Demo data set that needs no download: procedural shape images with captions and question/answer chats.

Usage (``eve_lightning.data.demo`` forwards to this module, under the name users know)::

    python -m eve_lightning.data.demo --out data/demo

Each image shows one to three shapes (circle, square, triangle, diamond) of distinct colours and shapes, small or
large, placed in thirds of the long axis, on canvases of many aspect ratios (square, landscape, portrait, 4:1
and 1:3). The vocabulary is tiny and the answers are deterministic functions of the picture, so a small model can
learn to describe and answer. Writes raw images and LLaVA-style annotations under ``OUT/raw`` (an example of the
input format) and shards through the regular writer::

    OUT/pretrain/{train,val}   caption shards (template plain)
    OUT/sft/{train,val}        conversation shards (template vicuna_v1), ~10% text-only, multi-turn

Everything is seeded per sample: the same arguments give byte-identical files, with any ``--workers``.

How it runs: each split is cut into blocks of one shard each, and the blocks of all four splits share one pool of
``--workers`` processes, longest first. A worker draws its block's pictures, writes their PNG files and writes
the block's shard itself (the picture is resized from memory instead of being decoded back from its file), so
only the annotation text goes back to the parent. The files are byte for byte what the plain pipeline writes
(every PNG saved by Pillow, then ``make_shards`` over them), with less work: a picture is a plain background with
a few shapes in known boxes, so the PNG rows are filtered only near the shapes' edges and the plain rows above
them go through zlib once for all pictures of a size (``PngEncoder``), and the resize runs only around the shapes,
from Pillow's own weights (``resize_bicubic``). ``--cache DIR`` (or ``$EVE_LIGHTNING_DEMO_CACHE``) keeps generated
sets by a content key (``DemoCache``) and links a set back into place when the same one is asked for again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, features

from eve_lightning.data.conversation import caption_turns, normalize_conversation, turns_to_json, word_count
from eve_lightning.data.geometry import band_geometry
from eve_lightning.data.make_shards import (
    DEFAULT_SHARD_BYTES,
    REPORT_FILE,
    BuildSummary,
    ShardWriter,
    _clean_out_dir,
    build_shards,
)
from eve_lightning.data.records import JPEG_QUALITY, BuildOptions, Prepared
from eve_lightning.data.shards import INDEX_FILE, SIDECAR_SUFFIX, encode_json, read_index

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
BACKGROUNDS = ((250, 250, 250), (205, 205, 205), (30, 30, 30))
# (width, height): square, landscape, portrait, very wide (4:1) and tall (1:3), small and large.
CANVASES = (
    (672, 672), (448, 448), (640, 480), (480, 640), (800, 400), (400, 800),
    (960, 540), (540, 960), (1024, 256), (256, 768), (336, 168),
)  # fmt: skip
COUNT_WORDS = ("one", "two", "three")
TEXT_ONLY_QA = (
    ("How many sides does a triangle have?", "three."),
    ("How many sides does a square have?", "four."),
    ("Which shape has no corners?", "a circle."),
    ("What colour do you get by mixing blue and yellow?", "green."),
    ("What colour do you get by mixing red and yellow?", "orange."),
    ("What colour do you get by mixing red and blue?", "purple."),
    ("Count from one to three.", "one, two, three."),
)
TEXT_ONLY = 0.1  # default share of text-only SFT samples
PARAMS_FILE = "generation.json"  # the generator's parameters, written next to the set
MARKER_FILE = ".eve_lightning_demo"  # written first: the folder is the generator's own (safe to regenerate)
TASK_IDS = {"pretrain": 0, "sft": 1}
TURNS = ("any", "independent")  # how the questions of one conversation are picked (see pick_turns)
ANSWERS = ("short", "restated")  # answer forms: "red." or "the circle is red." (see question_items)
ALL_OBJECTS = -1  # subject of the description: it names every object
DESCRIBE_ALONE = 1 / 3  # share of "independent" image conversations that only ask for the description
SPLIT_IDS = {"train": 0, "val": 1}
PNG_LEVEL = 1  # zlib level of the raw pictures
PART_PREFIX = ".part-"  # a block's shard is written in a folder of this name, then moved into its split
SHARD_SIZE = 500  # samples per shard (and per block of work)
SHAPE_MARGIN = 2  # px around a shape's coordinates that its drawn pixels stay within
GENERATOR_VERSION = 1  # part of the cache key: raise it whenever the files written for the same parameters change
CACHE_ENV = "EVE_LIGHTNING_DEMO_CACHE"  # a folder for generated sets, reused when the same set is asked for again


Box = tuple[int, int, int, int]  # (x0, y0, x1, y1): columns [x0, x1) x rows [y0, y1) of a picture


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn shape."""

    shape: str
    colour: str
    size: str
    slot: int  # 0..2 along the long axis


@dataclass(frozen=True)
class Scene:
    """A generated picture and the facts about it."""

    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[ShapeSpec, ...]

    @property
    def portrait(self) -> bool:
        return self.height > self.width


def position_phrase(slot: int, portrait: bool) -> str:
    """Return where a slot is, in words."""
    if portrait:
        return ("at the top", "in the middle", "at the bottom")[slot]
    return ("on the left", "in the middle", "on the right")[slot]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw the random facts of one picture."""
    width, height = CANVASES[int(rng.integers(len(CANVASES)))]
    n = int(rng.integers(1, 4))
    slots = sorted(int(s) for s in rng.choice(3, size=n, replace=False))
    colours = [list(COLOURS)[int(i)] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=n, replace=False)]
    sizes = [SIZES[int(i)] for i in rng.integers(0, 2, size=n)]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    specs = tuple(ShapeSpec(s, c, z, slot) for s, c, z, slot in zip(shapes, colours, sizes, slots))
    return Scene(width, height, background, specs)


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw a scene (positions jitter a little inside each slot)."""
    return _render(scene, rng)[0]


@dataclass(frozen=True)
class Sketch:
    """A scene laid out but not drawn: each shape's Pillow call, and boxes (x0, y0, x1, y1) around their pixels."""

    scene: Scene
    strokes: tuple[tuple[str, Any, tuple[int, int, int]], ...]  # (ImageDraw method, its coordinates, fill)
    box: tuple[int, int, int, int]
    parts: tuple[tuple[int, int, int, int], ...]  # a box around each shape's pixels, in the order of ``strokes``

    def paint(self, canvas: _Canvas | None = None) -> Image.Image:
        """The picture: the shapes drawn by Pillow on the plain background (on a lent ``canvas``, if given)."""
        size, plain = (self.scene.width, self.scene.height), self.scene.background
        img = Image.new("RGB", size, plain) if canvas is None else canvas.lend(size, plain)
        draw = ImageDraw.Draw(img)
        for method, xy, colour in self.strokes:
            getattr(draw, method)(xy, fill=colour)
        for box in self.parts if canvas is not None else ():
            canvas.mark(box)
        return img


def _layout(scene: Scene, rng: np.random.Generator) -> Sketch:
    """Place a scene's shapes (drawing their jitter from ``rng``) and find the box that holds their pixels.

    Pillow draws a shape within the whole pixels of its coordinates (it truncates them); the box adds a margin.
    """
    long_side = scene.height if scene.portrait else scene.width
    short_side = scene.width if scene.portrait else scene.height
    cell = long_side / 3
    strokes, parts = [], []
    for spec in scene.shapes:
        extent = min(cell, short_side) * (0.8 if spec.size == "large" else 0.4)
        room_long, room_short = (cell - extent) / 2, (short_side - extent) / 2
        c_long = (spec.slot + 0.5) * cell + rng.uniform(-0.5, 0.5) * room_long
        c_short = short_side / 2 + rng.uniform(-0.3, 0.3) * room_short
        cx, cy = (c_short, c_long) if scene.portrait else (c_long, c_short)
        h = extent / 2
        colour = COLOURS[spec.colour]
        if spec.shape == "circle":
            strokes.append(("ellipse", (cx - h, cy - h, cx + h, cy + h), colour))
        elif spec.shape == "square":
            strokes.append(("rectangle", (cx - h, cy - h, cx + h, cy + h), colour))
        elif spec.shape == "triangle":
            strokes.append(("polygon", [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], colour))
        else:
            strokes.append(("polygon", [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], colour))
        x0, y0 = int(cx - h) - SHAPE_MARGIN, int(cy - h) - SHAPE_MARGIN
        x1, y1 = int(cx + h) + SHAPE_MARGIN + 1, int(cy + h) + SHAPE_MARGIN + 1
        parts.append((max(x0, 0), max(y0, 0), min(x1, scene.width), min(y1, scene.height)))
    return Sketch(scene, tuple(strokes), _union(parts), tuple(parts))


class _Canvas:
    """A plain picture of one size and colour, drawn on and then painted plain again where it was drawn.

    Saves filling a whole new picture for each of a run of pictures of the same size and colour.
    """

    def __init__(self) -> None:
        self._image: Image.Image | None = None
        self._plain: tuple[int, ...] = ()
        self._marks: list[tuple[int, int, int, int]] = []

    def lend(self, size: tuple[int, int], plain: tuple[int, ...]) -> Image.Image:
        """A plain RGB picture of ``size`` in ``plain``: the kept one, or a new one for another size or colour."""
        if self._image is None or self._image.size != size or self._plain != tuple(plain):
            self._image, self._plain, self._marks = Image.new("RGB", size, plain), tuple(plain), []
        return self._image

    def mark(self, box: tuple[int, int, int, int]) -> None:
        """Note that ``box`` of the lent picture was drawn on."""
        self._marks.append(box)

    def clean(self) -> None:
        """Paint the marked boxes plain again: the picture is plain once more."""
        if self._image is not None:
            for box in self._marks:
                self._image.paste(self._plain, box)
        self._marks.clear()


def _union(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The smallest box (x0, y0, x1, y1) that holds ``boxes`` (at least one)."""
    x0s, y0s, x1s, y1s = zip(*boxes)
    return min(x0s), min(y0s), max(x1s), max(y1s)


def _render(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw a scene; also return a box (x0, y0, x1, y1) that holds every pixel of a shape (see ``_layout``)."""
    sketch = _layout(scene, rng)
    return sketch.paint(), sketch.box


def caption(scene: Scene, order: Sequence[int] | None = None, shape_first: bool = False) -> str:
    """Describe a scene in the demo's small vocabulary, listing the objects left to right (or in ``order``).

    Example: ``two shapes: a small red circle on the left and a large blue square on the right.`` With
    ``shape_first`` each object is named by its shape first: ``a circle that is small and red on the left``.
    """
    shapes = scene.shapes if order is None else [scene.shapes[int(i)] for i in order]
    if shape_first:
        parts = [
            f"a {s.shape} that is {s.size} and {s.colour} {position_phrase(s.slot, scene.portrait)}" for s in shapes
        ]
    else:
        parts = [f"a {s.size} {s.colour} {s.shape} {position_phrase(s.slot, scene.portrait)}" for s in shapes]
    n = len(parts)
    listing = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''}: {listing}."


def question_items(scene: Scene, rng: np.random.Generator, answers: str = "short") -> list[tuple[str, str, int | None]]:
    """All question/answer pairs about a scene, each with its subject.

    The subject is the index of the object whose colour and shape the question or its answer names together (so a
    later turn could read that pairing from the text), ``ALL_OBJECTS`` for the description and None otherwise. One
    ``Is there`` question, true or false. ``answers="restated"`` answers the object questions in a sentence that
    names the object first, as a caption does (``the circle is red.`` instead of ``red.``).
    """
    count = COUNT_WORDS[len(scene.shapes) - 1]
    qa: list[tuple[str, str, int | None]] = [
        ("Describe the image.", caption(scene), ALL_OBJECTS),
        ("How many shapes are there?", f"{count}.", None),
    ]

    def say(subject: str, answer: str) -> str:
        return f"{subject} is {answer}" if answers == "restated" else answer

    for k, s in enumerate(scene.shapes):
        where = position_phrase(s.slot, scene.portrait)
        qa += [
            (f"What colour is the {s.shape}?", say(f"the {s.shape}", f"{s.colour}."), k),
            (f"What shape is the {s.colour} object?", say(f"the {s.colour} object", f"a {s.shape}."), k),
            (f"Where is the {s.colour} {s.shape}?", say(f"the {s.colour} {s.shape}", f"{where}."), k),
            (f"Is the {s.colour} {s.shape} small or large?", say(f"the {s.colour} {s.shape}", f"{s.size}."), k),
        ]
    present = {(s.colour, s.shape): k for k, s in enumerate(scene.shapes)}
    if rng.random() < 0.5:
        colour, shape = next(iter(sorted(present)))
        qa.append((f"Is there a {colour} {shape}?", "yes.", present[(colour, shape)]))
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        qa.append((f"Is there a {colour} {shape}?", "no.", None))
    return qa


def questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """All question/answer pairs about a scene (one ``Is there`` question, true or false)."""
    return [(q, a) for q, a, _ in question_items(scene, rng)]


def pick_turns(
    items: list[tuple[str, str, int | None]], rng: np.random.Generator, max_turns: int, turns: str
) -> list[int]:
    """Indices of the questions one conversation asks, in order.

    ``any``: 1 to ``max_turns`` of them at random; an earlier answer may then give a later one away (the caption
    names every colour-shape pair). ``independent``: no turn can be answered from the text of the others: the
    description is asked on its own (``DESCRIBE_ALONE`` of the conversations), else each object is the subject of
    at most one question.
    """
    wanted = min(int(rng.integers(1, max_turns + 1)), len(items))
    if turns == "any":
        return [int(i) for i in rng.choice(len(items), size=wanted, replace=False)]
    describe = [i for i, item in enumerate(items) if item[2] == ALL_OBJECTS]
    if describe and rng.random() < DESCRIBE_ALONE:
        return describe[:1]
    picked: list[int] = []
    used: set[int] = set()
    for i in (int(i) for i in rng.permutation(len(items))):
        subject = items[i][2]
        if subject == ALL_OBJECTS:
            continue
        if subject is not None and subject in used:
            continue
        picked.append(i)
        if subject is not None:
            used.add(subject)
        if len(picked) == wanted:
            break
    return picked


def image_path(task: str, split: str, index: int) -> str:
    """Where sample ``index``'s picture goes, relative to the raw images folder (nested, like real data sets)."""
    return f"{task}/{split}/{index // 1000:03d}/{index:06d}.png"


def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASK_IDS[task], SPLIT_IDS[split], index])


@dataclass(frozen=True)
class Picture:
    """A drawn scene: its image, its background colour and a box (x0, y0, x1, y1) around every shape.

    ``parts``: a box around each shape (empty: only ``box`` is known).
    """

    image: Image.Image
    background: tuple[int, int, int]
    box: tuple[int, int, int, int]
    parts: tuple[tuple[int, int, int, int], ...] = ()


def draw_sample(
    index: int,
    *,
    task: str,
    split: str,
    seed: int,
    text_only: float,
    max_turns: int = 3,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
) -> tuple[dict[str, Any], Picture | None]:
    """Draw sample ``index`` of a split: its annotation record and its ``Picture`` (None for text-only samples).

    Nothing is written; ``make_record`` writes the picture where the record's ``image`` says. An image
    conversation asks up to ``max_turns`` of the picture's questions, each once, picked as ``turns`` says
    (``pick_turns``). A share ``shuffled_captions`` of the captions lists the objects in random order instead of
    left to right: naming an object's shape after its colour then takes finding the object by its colour, as the
    questions do, instead of walking the picture in order. A share ``shape_first_captions`` of the training
    captions names each object by its shape first, so that naming its colour takes finding it by its shape;
    held-out captions keep the form the evaluation reads. ``answers``: see ``question_items``.
    """
    record, sketch = sketch_sample(
        index, task=task, split=split, seed=seed, text_only=text_only, max_turns=max_turns, turns=turns,
        shuffled_captions=shuffled_captions, answers=answers, shape_first_captions=shape_first_captions,
    )  # fmt: skip
    if sketch is None:
        return record, None
    return record, Picture(sketch.paint(), sketch.scene.background, sketch.box, sketch.parts)


def sketch_sample(
    index: int,
    *,
    task: str,
    split: str,
    seed: int,
    text_only: float,
    max_turns: int = 3,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
) -> tuple[dict[str, Any], Sketch | None]:
    """``draw_sample`` without the drawing: the record and the picture's ``Sketch`` (None for text-only samples)."""
    rng = _rng(seed, task, split, index)
    rid = f"{task}-{split}-{index:06d}"
    if task == "sft" and rng.random() < text_only:
        picked = rng.choice(len(TEXT_ONLY_QA), size=int(rng.integers(1, 3)), replace=False)
        conv = []
        for i in picked:
            q, a = TEXT_ONLY_QA[int(i)]
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        return {"id": rid, "conversations": conv}, None
    scene = sample_scene(rng)
    rel = image_path(task, split, index)
    sketch = _layout(scene, rng)  # draws the jitter: before the text's draws
    if task == "pretrain":
        shuffled = shuffled_captions > 0 and rng.random() < shuffled_captions  # no draw: the default stream stays
        order = rng.permutation(len(scene.shapes)) if shuffled else None
        shape_first = shape_first_captions > 0 and split == "train" and rng.random() < shape_first_captions
        return {"id": rid, "image": rel, "caption": caption(scene, order, shape_first)}, sketch
    qa = question_items(scene, rng, answers)
    conv = []
    for turn, i in enumerate(pick_turns(qa, rng, max_turns, turns)):
        q, a, _ = qa[i]
        if turn == 0:  # the image placeholder sits before or after the first question, as in LLaVA data
            q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    record = {"id": rid, "image": rel, "conversations": conv, "objects": len(scene.shapes)}  # objects: for scoring
    return record, sketch


def make_record(
    index: int,
    *,
    task: str,
    split: str,
    seed: int,
    images_dir: str,
    text_only: float,
    max_turns: int = 3,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
) -> dict[str, Any]:
    """Generate sample ``index`` of a split: write its image (if any) under ``images_dir``, return its record.

    The content options are ``draw_sample``'s.
    """
    record, picture = draw_sample(
        index, task=task, split=split, seed=seed, text_only=text_only, max_turns=max_turns, turns=turns,
        shuffled_captions=shuffled_captions, answers=answers, shape_first_captions=shape_first_captions,
    )  # fmt: skip
    if picture is not None:
        path = Path(images_dir) / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(path, png_bytes(picture.image, picture.background, picture.parts))
    return record


def png_bytes(
    image: Image.Image, background: tuple[int, int, int] | None = None, boxes: Sequence[Box] | None = None
) -> bytes:
    """The PNG file of a drawn picture, as the raw set stores it (zlib level 1: fast, re-encoded into the shards).

    The bytes are Pillow's (``image.save(..., format="PNG", compress_level=PNG_LEVEL)``); an RGB picture is encoded
    by ``PngEncoder``, which filters only around the shapes when ``background`` and ``boxes`` say where they are.
    """
    if image.mode != "RGB":
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=PNG_LEVEL)
        return buf.getvalue()
    return PngEncoder().encode(image, background, boxes)


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


def _pixel_words(image: Image.Image, box: Box) -> bytes:
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
            np.frombuffer(_pixel_words(image, (c0 - 1, r0 - 1, c1, r1)), np.uint32).reshape(r1 - r0 + 1, c1 - c0 + 1)
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


_RESIZE_ORDERS: dict[tuple[int, int, int, int], str | None] = {}  # (w, h, w2, h2) -> "hv", "vh" or None
_BICUBIC = Image.Resampling.BICUBIC


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
        words = np.frombuffer(_pixel_words(image, (a, 0, b, across) if axis == 0 else (0, a, across, b)), np.uint32)
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
        groups = [b for k, b in enumerate(groups) if k not in pair] + [_union([groups[pair[0]], groups[pair[1]]])]


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
        words = np.frombuffer(_pixel_words(image, box), np.uint32).reshape(y1 - y0, x1 - x0)
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


def shard_image(
    image: Image.Image | Picture, png: bytes, max_side: int | None, canvas: _Canvas | None = None
) -> tuple[str, bytes, int, int]:
    """The shard member of a drawn picture: (extension, bytes, width, height), as ``make_shards`` stores its PNG.

    Same result as ``records.prepare_record`` reading ``png`` from disk: at ``max_side`` the picture is resized to
    its EVE band size and stored as JPEG; a picture already of that size (or ``max_side`` None) keeps its PNG.
    ``canvas``: a plain picture lent for the resized picture (plain again afterwards).
    """
    picture = image if isinstance(image, Picture) else Picture(image, (0, 0, 0), (0, 0, 0, 0))
    member = _resized_member(picture, max_side, canvas, known=isinstance(image, Picture))
    return member if member is not None else ("png", png, *picture.image.size)


def _resized_member(
    picture: Picture, max_side: int | None, canvas: _Canvas | None = None, known: bool = True
) -> tuple[str, bytes, int, int] | None:
    """``shard_image``'s JPEG member of a picture, or None when the picture keeps its PNG.

    ``known``: the picture's background and boxes are known (else they are found from its pixels).
    """
    image = picture.image
    width, height = image.size
    target = (width, height)
    if max_side is not None:
        geom = band_geometry(width, height, max_side)
        target = (geom.eve.width, geom.eve.height)
    if target == (width, height):
        return None
    if known:
        resized = resize_bicubic(image, target, picture.background, picture.box, picture.parts, canvas)
    else:
        resized = resize_bicubic(image, target)
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=JPEG_QUALITY)
    if canvas is not None:
        canvas.clean()
    return "jpg", buf.getvalue(), target[0], target[1]


def shard_sample(index: int, record: dict[str, Any], image: tuple[str, bytes, int, int] | None, fmt: str) -> Prepared:
    """A generated record as the shard writer takes it (what ``records.prepare_record`` makes of it from disk).

    Args:
        index: the record's position in its split (the sample key).
        record: the annotation record (``draw_sample``).
        image: ``shard_image`` of its picture, None for a text-only record.
        fmt: ``caption`` (pretraining) or ``llava`` (conversations).
    """
    if fmt == "caption":
        turns = caption_turns(record["caption"])
    else:
        turns = normalize_conversation(record["conversations"], has_image=image is not None)
    members: list[tuple[str, bytes]] = []
    meta: dict[str, Any] = {"id": record["id"]}
    width = height = 0
    if image is not None:
        ext, data, width, height = image
        members.append((ext, data))
        meta["image"] = record["image"]
    if fmt == "caption":
        members.append(("txt", turns[-1].text.encode("utf-8")))
    else:
        meta["conversations"] = turns_to_json(turns)
    members.append(("json", encode_json(meta)))
    return Prepared(index, f"{index:09d}", members, image is not None, word_count(turns), width, height)


@dataclass(frozen=True)
class _Split:
    """One task/split of a set: what its samples hold and where they go."""

    root: str
    task: str
    split: str
    count: int
    seed: int
    max_side: int | None
    shard_size: int
    content: tuple[tuple[str, Any], ...]  # draw_sample's content options (text_only, max_turns, ...)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.split}"

    @property
    def shard_dir(self) -> Path:
        return Path(self.root) / self.task / self.split

    @property
    def fmt(self) -> str:
        return "caption" if self.task == "pretrain" else "llava"


@dataclass(frozen=True)
class _Block:
    """Samples ``start`` to ``stop`` (excluded) of a split: the samples of its shard number ``shard``."""

    split: _Split
    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class _BlockResult:
    block: _Block
    annotations: str  # the block's records, as they sit in the split's annotation file (no brackets)
    shard: dict[str, Any] | None  # the shard's index entry; None when the byte limit cut it (see _finish_split)
    pictures: tuple[int, ...]  # the samples that have a picture


def _indented_json(value: Any, level: int) -> str:
    """``json.dumps(value, indent=1)`` of a value nested ``level`` deep (its first line not indented).

    The same text as the json module's indented output (which has no C encoder), for JSON values built of dicts
    with string keys, lists, strings, ints, floats, booleans and None.
    """
    pad = "\n" + " " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (json.dumps(k) + ": " + _indented_json(v, level + 1) for k, v in value.items())
        return "{" + pad + ("," + pad).join(items) + "\n" + " " * level + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[" + pad + ("," + pad).join(_indented_json(v, level + 1) for v in value) + "\n" + " " * level + "]"
    return json.dumps(value)


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path``: a file there is replaced, never written through (it may be linked)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        os.unlink(path)
        fd = os.open(path, flags, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_PNG_BATCH = 32  # pictures whose PNG rows are filtered together (``PngEncoder.finish``)


def _encode_pictures(sketches: dict[int, Sketch], max_side: int | None) -> dict[int, tuple[bytes, tuple]]:
    """Draw and encode pictures: each one's PNG file and shard member (``shard_image``), by sample index.

    Pictures of one size and background go in order of their box's top, so that ``PngEncoder`` puts the plain
    rows above the shapes through zlib once for them all, and are drawn on one plain canvas kept for them; their
    PNG files are encoded in batches of ``_PNG_BATCH``. The bytes do not depend on the order.
    """
    encoder = PngEncoder()
    encoded: dict[int, tuple[bytes, tuple]] = {}
    order = sorted(sketches, key=lambda i: (sketches[i].scene.width, sketches[i].scene.height,
                                            sketches[i].scene.background, sketches[i].box[1], i))  # fmt: skip
    drawn, resized = _Canvas(), _Canvas()  # plain pictures to draw on, kept while size and background stay
    pending: list[tuple[int, _PngJob, tuple | None]] = []  # read pictures waiting for their PNG file

    def finish() -> None:
        for (i, job, member), png in zip(pending, encoder.finish([job for _, job, _ in pending])):
            encoded[i] = png, member if member is not None else ("png", png, job.width, job.height)
        pending.clear()

    for i in order:
        sketch = sketches[i]
        picture = Picture(sketch.paint(drawn), sketch.scene.background, sketch.box, sketch.parts)
        job = encoder.read(picture.image, picture.background, picture.parts)
        pending.append((i, job, _resized_member(picture, max_side, resized)))
        drawn.clean()
        if len(pending) == _PNG_BATCH:
            finish()
    finish()
    return encoded


def _tar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile`` writes for ``shards.tar_member(name, data)``: mode 0444, owner 0, mtime 0."""
    encoded = name.encode()
    assert len(encoded) <= 100, name  # a longer name would take the prefix field
    head = b"".join([
        encoded.ljust(100, b"\0"), b"0000444\0", b"0000000\0", b"0000000\0", b"%011o\0" % size, b"00000000000\0",
        b" " * 8, b"0", bytes(100), b"ustar\x0000", bytes(64), bytes(16), bytes(155),  # no device numbers
    ]).ljust(512, b"\0")  # fmt: skip
    return head[:148] + b"%06o\0" % sum(head) + head[155:]  # the checksum, counting its own field as spaces


class _ShardBytes:
    """A shard's tar file and sidecar built in memory: what ``make_shards.ShardWriter`` writes for one shard.

    Members as ``shards.tar_member`` makes them, each header and padded payload in turn, two zero blocks at the end
    and zeros up to a whole tar record, as ``tarfile`` closes an archive.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0
        self.columns: dict[str, list[Any]] = {
            k: [] for k in ("keys", "offsets", "has_image", "words", "width", "height")
        }
        self.samples = self.images = self.words = 0

    def add(self, sample: Prepared) -> None:
        """Append one sample (its members and its sidecar columns)."""
        for column, value in zip(self.columns.values(), (sample.key, self.offset, int(sample.has_image),
                                                         sample.words, sample.width, sample.height)):  # fmt: skip
            column.append(value)
        for ext, data in sample.members:
            pad = -len(data) % 512
            self.chunks += [_tar_header(f"{sample.key}.{ext}", len(data)), data, bytes(pad)]
            self.offset += 512 + len(data) + pad
        self.samples += 1
        self.images += int(sample.has_image)
        self.words += sample.words

    def tar(self) -> bytes:
        """The tar file."""
        end = self.offset + 1024
        return b"".join([*self.chunks, bytes(1024 + -end % (20 * 512))])

    def sidecar(self) -> bytes:
        """The sidecar index (keys, offsets, modality, word counts, image sizes)."""
        return json.dumps(self.columns, separators=(",", ":")).encode("utf-8")


def _write_block(block: _Block) -> _BlockResult:
    """Draw a block's samples, write their pictures and their shard (in a worker process); return the rest.

    The records are drawn first, then the pictures are drawn and encoded (``_encode_pictures``), then the files
    are written in sample order. The shard is built in memory (``_ShardBytes``), written in a folder of its own,
    then moved to its place in the split.
    """
    sp = block.split
    content = dict(sp.content)
    images = Path(sp.root) / "raw" / "images"
    part = sp.shard_dir / f"{PART_PREFIX}{block.shard:06d}"
    shard, cut = _ShardBytes(), False
    indices = range(block.start, block.stop)
    drawn = [sketch_sample(i, task=sp.task, split=sp.split, seed=sp.seed, **content) for i in indices]
    encoded = _encode_pictures({i: sketch for i, (_, sketch) in zip(indices, drawn) if sketch is not None},
                               sp.max_side)  # fmt: skip
    folder = None
    for i, (record, _) in zip(indices, drawn):
        png, member = encoded.get(i, (None, None))
        if png is not None:
            path = images / record["image"]
            if path.parent != folder:
                folder = path.parent
                folder.mkdir(parents=True, exist_ok=True)
            _write_new(path, png)
        shard.add(shard_sample(i, record, member, sp.fmt))
        cut = cut or (shard.offset >= DEFAULT_SHARD_BYTES and i < block.stop - 1)  # the writer would start another
    records = [record for record, _ in drawn]
    pictures = tuple(sorted(encoded))
    annotations = ",\n".join(" " + _indented_json(record, 1) for record in records)  # json.dumps(records, indent=1)
    if cut:  # the byte limit closes a shard early: the split's shards are renumbered
        return _BlockResult(block, annotations, None, pictures)
    name = f"shard-{block.shard:06d}.tar"
    sidecar = name[: -len(".tar")] + SIDECAR_SUFFIX
    tar = shard.tar()
    part.mkdir(parents=True, exist_ok=True)
    _write_new(part / name, tar)
    _write_new(part / sidecar, shard.sidecar())
    os.replace(part / name, sp.shard_dir / name)
    os.replace(part / sidecar, sp.shard_dir / sidecar)
    part.rmdir()
    entry = {"file": name, "num_samples": shard.samples, "num_images": shard.images, "words": shard.words,
             "bytes": len(tar), "sidecar": sidecar}  # fmt: skip
    return _BlockResult(block, annotations, entry, pictures)


def _run_blocks(blocks: list[_Block], workers: int) -> list[_BlockResult]:
    """Write every block, in ``workers`` processes; the longest blocks go first, so the last ones end together."""
    order = sorted(blocks, key=lambda b: b.stop - b.start, reverse=True)
    if workers <= 1 or len(order) <= 1:
        return [_write_block(b) for b in order]
    _check_resizes({b.split.max_side for b in order})  # once, before the workers fork
    with multiprocessing.get_context("fork").Pool(min(workers, len(order))) as pool:
        return list(pool.imap_unordered(_write_block, order, chunksize=1))


def _check_resizes(max_sides: set[int | None]) -> None:
    """Find the resize order and weights of every canvas at these sizes (``_resize_order``), kept in this process."""
    for side in sorted(side for side in max_sides if side is not None):
        for canvas in CANVASES:
            eve = band_geometry(*canvas, side).eve
            if (eve.width, eve.height) != canvas:
                _resize_order(canvas, (eve.width, eve.height))


def _clear_split(sp: _Split, overwrite: bool) -> None:
    """Empty the split's shard folder of shard files, as ``build_shards`` does (raises without ``overwrite``)."""
    if sp.shard_dir.is_dir():
        for p in sp.shard_dir.glob(f"{PART_PREFIX}*"):  # left by an interrupted run
            shutil.rmtree(p)
    _clean_out_dir(sp.shard_dir, overwrite)


def _blocks(sp: _Split) -> list[_Block]:
    """The split cut into one block per shard."""
    return [
        _Block(sp, k, start, min(start + sp.shard_size, sp.count))
        for k, start in enumerate(range(0, sp.count, sp.shard_size))
    ]


def _finish_split(sp: _Split, results: list[_BlockResult], workers: int) -> BuildSummary:
    """Write the split's annotation file, ``index.json`` and skip report; return its build summary.

    Where a shard reached the writer's byte limit before its sample count (thousands of samples per shard), the
    shards are written again from the pictures on disk by ``build_shards``, which numbers them as it goes.
    """
    results = sorted(results, key=lambda r: r.block.shard)
    images = Path(sp.root) / "raw" / "images"
    (Path(sp.root) / "raw").mkdir(parents=True, exist_ok=True)
    text = "[\n" + ",\n".join(r.annotations for r in results) + "\n]" if results else "[]"
    _replace_text(Path(sp.root) / "raw" / f"{sp.task}_{sp.split}.json", text)
    opts = BuildOptions(fmt=sp.fmt, images_dir=str(images), max_side=sp.max_side)  # type: ignore[arg-type]
    if any(r.shard is None for r in results):
        for p in sp.shard_dir.glob(f"{PART_PREFIX}*"):
            shutil.rmtree(p)
        records = json.loads(text)
        return build_shards(
            records, sp.shard_dir, opts, shard_size=sp.shard_size, max_shard_bytes=DEFAULT_SHARD_BYTES,
            workers=workers, overwrite=True, progress=False,
        )  # fmt: skip
    sp.shard_dir.mkdir(parents=True, exist_ok=True)
    (sp.shard_dir / REPORT_FILE).write_text("", encoding="utf-8")  # no record is skipped
    writer = ShardWriter(sp.shard_dir)
    writer.shards = [r.shard for r in results if r.shard is not None]
    writer.close({"format": opts.fmt, "max_side": opts.max_side, "read": sp.count, "skipped": {}})
    images_written = sum(s["num_images"] for s in writer.shards)
    return BuildSummary(str(sp.shard_dir), read=sp.count, written=sp.count, shards=len(writer.shards),
                        images=images_written)  # fmt: skip


class DemoCache:
    """Generated sets kept in a folder by content key, so that asking for the same set again costs no generation.

    The key hashes the generator's version and source (with the code that writes the shards), the set's
    parameters and seed, the shard size and the versions of the libraries that encode the files. An entry holds
    the set's files as hard links (copies where the folder is on another file system) and a manifest of their
    sizes and modification times; an entry whose files changed since is dropped and the set generated again.
    Files are never written through in place (they are replaced), so a linked set cannot change its entry.
    """

    MANIFEST = "manifest.json"

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key

    @property
    def entry(self) -> Path:
        return self.folder / self.key

    @classmethod
    def open(cls, cache: str | Path | bool, params: dict[str, Any], shard_size: int) -> DemoCache | None:
        """The cache entry of a set (None: no cache); ``cache`` as ``generate`` takes it."""
        if cache is True:
            cache = os.environ.get(CACHE_ENV) or False
        if cache is False or not str(cache):
            return None
        return cls(Path(cache), cache_key(params, shard_size))

    def restore(self, root: Path) -> bool:
        """Link the entry's files into ``root``; False when there is no entry or it changed (it is then dropped)."""
        try:
            manifest = json.loads((self.entry / self.MANIFEST).read_text(encoding="utf-8"))
            intact = all(
                (st := (self.entry / rel).stat()).st_size == size and st.st_mtime_ns == mtime
                for rel, size, mtime in manifest
            )
        except (OSError, ValueError, TypeError):
            intact, manifest = False, None
        if not intact:
            if manifest is not None:
                shutil.rmtree(self.entry, ignore_errors=True)
            return False
        for rel, _, _ in manifest:
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            _link_or_copy(self.entry / rel, dst)
        return True

    def store(self, root: Path, files: list[str]) -> None:
        """Keep ``files`` (relative to ``root``) as the entry, unless another process stored it first."""
        if self.entry.exists():
            return
        tmp = self.folder / f".{self.key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        manifest = []
        for rel in files:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(root / rel, dst)
            st = dst.stat()
            manifest.append([rel, st.st_size, st.st_mtime_ns])
        (tmp / self.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        try:
            os.rename(tmp, self.entry)
        except OSError:  # stored meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(src, dst)


def cache_key(params: dict[str, Any], shard_size: int) -> str:
    """Content key of a generated set (``DemoCache``): the same key means the same files."""
    from eve_lightning import constants
    from eve_lightning.data import conversation, geometry, make_shards, records, shards

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], records, make_shards, shards, conversation, geometry, constants):
        digest.update(Path(str(module.__file__)).read_bytes())  # the code that decides the files' bytes
    codecs = {"pillow": PIL.__version__, "numpy": np.__version__, "jpeg": features.version("jpg"),
              "zlib": features.version("zlib")}  # fmt: skip
    what = {"generator": GENERATOR_VERSION, "params": params, "shard_size": shard_size, "codecs": codecs}
    digest.update(json.dumps(what, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _summary_from_index(sp: _Split) -> BuildSummary:
    index = read_index(sp.shard_dir)
    return BuildSummary(
        str(sp.shard_dir), read=index["read"], written=index["num_samples"], shards=len(index["shards"]),
        images=index["num_images"], skipped=Counter(index["skipped"]),
    )  # fmt: skip


def _written_files(splits: list[_Split], results: list[_BlockResult]) -> list[str]:
    """The files a generation wrote, relative to its folder (the marker and parameter record aside)."""
    files = []
    for sp in splits:
        files.append(f"raw/{sp.task}_{sp.split}.json")
        files += [f"raw/images/{image_path(sp.task, sp.split, i)}" for r in results if r.block.split == sp
                  for i in r.pictures]  # fmt: skip
        folder = f"{sp.task}/{sp.split}"
        files += [f"{folder}/{INDEX_FILE}", f"{folder}/{REPORT_FILE}"]
        files += [f"{folder}/{shard[k]}" for shard in read_index(sp.shard_dir)["shards"] for k in ("file", "sidecar")]
    return files


def _generate_splits(
    root: Path, splits: list[_Split], workers: int, overwrite: bool, cache: DemoCache | None = None
) -> dict[str, BuildSummary]:
    """Generate several splits at once, in one pool of ``workers`` processes; or take them from ``cache``."""
    for sp in splits:
        _clear_split(sp, overwrite)
    if cache is not None and cache.restore(root):
        return {sp.name: _summary_from_index(sp) for sp in splits}
    results = _run_blocks([b for sp in splits for b in _blocks(sp)], workers)
    summaries = {sp.name: _finish_split(sp, [r for r in results if r.block.split == sp], workers) for sp in splits}
    if cache is not None:
        cache.store(root, _written_files(splits, results))
    return summaries


def generate_split(
    out: Path,
    task: str,
    split: str,
    count: int,
    *,
    seed: int,
    max_side: int | None,
    shard_size: int,
    workers: int,
    overwrite: bool,
    **content: Any,
) -> BuildSummary:
    """Generate one split's raw files and annotations, and write its shards.

    ``content``: what the records hold, as ``draw_sample``'s keyword arguments (``text_only``, ``max_turns``,
    ``turns``, ``shuffled_captions``, ...). Samples are drawn, encoded and written in blocks of one shard each,
    in ``workers`` processes; the files do not depend on ``workers``.
    """
    sp = _Split(str(out), task, split, count, seed, max_side, shard_size, tuple(sorted(content.items())))
    return _generate_splits(Path(out), [sp], workers, overwrite)[sp.name]


def generate(
    out: str | Path,
    *,
    num_pretrain: int = 4000,
    num_sft: int = 4000,
    num_val: int = 200,
    seed: int = 0,
    max_side: int | None = 672,
    shard_size: int = SHARD_SIZE,
    workers: int = 1,
    text_only: float = TEXT_ONLY,
    overwrite: bool = False,
    max_turns: int = 3,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
    cache: str | Path | bool = True,
) -> dict[str, BuildSummary]:
    """Generate the whole demo set under ``out`` and return the build summary of each ``task/split``.

    ``cache``: a folder where generated sets are kept by a content key (``DemoCache``) and taken from when the
    same set is asked for again; True: the folder ``$EVE_LIGHTNING_DEMO_CACHE`` names, if set; False: none.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1 (questions per image conversation), got {max_turns}")
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {', '.join(TURNS)} (how questions are picked), got {turns!r}")
    if not 0.0 <= shuffled_captions <= 1.0:
        raise ValueError(f"shuffled_captions is a share of the captions, in [0, 1]; got {shuffled_captions}")
    if not 0.0 <= shape_first_captions <= 1.0:
        raise ValueError(f"shape_first_captions is a share of the captions, in [0, 1]; got {shape_first_captions}")
    if answers not in ANSWERS:
        raise ValueError(f"answers must be one of {', '.join(ANSWERS)} (the answer form), got {answers!r}")
    root = Path(out)
    params = generation_params(
        num_pretrain=num_pretrain, num_sft=num_sft, num_val=num_val, seed=seed, max_side=max_side,
        max_turns=max_turns, text_only=text_only, turns=turns, shuffled_captions=shuffled_captions,
        answers=answers, shape_first_captions=shape_first_captions,
    )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_FILE).write_text("generated by eve_lightning.data.demo\n", encoding="utf-8")
    (root / PARAMS_FILE).unlink(missing_ok=True)  # an interrupted run must not leave the old record behind
    plan = {
        ("pretrain", "train"): num_pretrain,
        ("pretrain", "val"): num_val,
        ("sft", "train"): num_sft,
        ("sft", "val"): num_val,
    }
    content = dict(
        text_only=text_only, max_turns=max_turns, turns=turns, shuffled_captions=shuffled_captions, answers=answers,
        shape_first_captions=shape_first_captions,
    )  # fmt: skip
    splits = [
        _Split(str(root), task, split, count, seed, max_side, shard_size, tuple(sorted(content.items())))
        for (task, split), count in plan.items()
        if count > 0
    ]
    store = DemoCache.open(cache, params, shard_size)
    summaries = _generate_splits(root, splits, workers, overwrite, store)
    tmp = root / (PARAMS_FILE + ".tmp")
    tmp.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / PARAMS_FILE)  # written last, atomically: a record means a complete set
    return summaries


def generation_params(
    *,
    num_pretrain: int,
    num_sft: int,
    num_val: int,
    seed: int,
    max_side: int | None,
    max_turns: int,
    text_only: float = TEXT_ONLY,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
) -> dict[str, Any]:
    """What decides the contents of a generated set (recorded in ``PARAMS_FILE`` next to it)."""
    return {
        "num_pretrain": num_pretrain,
        "num_sft": num_sft,
        "num_val": num_val,
        "seed": seed,
        "max_side": max_side,
        "text_only": text_only,
        "max_turns": max_turns,
        "turns": turns,
        "shuffled_captions": shuffled_captions,
        "answers": answers,
        "shape_first_captions": shape_first_captions,
    }


def owns_folder(out: str | Path) -> bool:
    """Whether the generator may (re)generate into ``out``: it is new or empty, or a demo set's own folder."""
    root = Path(out)
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    return not any(root.iterdir()) or (root / MARKER_FILE).is_file() or (root / PARAMS_FILE).is_file()


def recorded_params(out: str | Path) -> dict[str, Any] | None:
    """The parameters a set under ``out`` was generated with (None: no record, e.g. generated before records)."""
    path = Path(out) / PARAMS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    record.setdefault("turns", "any")  # sets recorded before these options were added
    record.setdefault("shuffled_captions", 0.0)
    record.setdefault("answers", "short")
    record.setdefault("shape_first_captions", 0.0)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.data.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-pretrain", type=int, default=4000, help="caption training samples")
    p.add_argument("--num-sft", type=int, default=4000, help="conversation training samples")
    p.add_argument("--num-val", type=int, default=200, help="held-out samples per task")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--max-side", type=int, default=672, choices=(0, 672, 1344), help="pre-resize (0: keep)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="samples per shard")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--text-only", type=float, default=TEXT_ONLY, help="share of text-only SFT samples")
    p.add_argument("--max-turns", type=int, default=3, help="most questions per image conversation (>= 1)")
    p.add_argument(
        "--turns", choices=TURNS, default="any", help="independent: no turn answerable from the others' text"
    )
    p.add_argument(
        "--shuffled-captions", type=float, default=0.0, help="share of captions listing the objects in random order"
    )
    p.add_argument("--answers", choices=ANSWERS, default="short", help="restated: 'the circle is red.', not 'red.'")
    p.add_argument(
        "--shape-first-captions", type=float, default=0.0, help="share of training captions naming shapes first"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing shards")
    p.add_argument("--reuse", action="store_true", help="keep a set made with the same parameters, else regenerate")
    p.add_argument(
        "--cache", default=None, help=f"folder of generated sets to reuse by content (default: ${CACHE_ENV}, if set)"
    )
    args = p.parse_args(argv)
    params = generation_params(
        num_pretrain=args.num_pretrain, num_sft=args.num_sft, num_val=args.num_val, seed=args.seed,
        max_side=args.max_side or None, max_turns=args.max_turns, text_only=args.text_only, turns=args.turns,
        shuffled_captions=args.shuffled_captions, answers=args.answers, shape_first_captions=args.shape_first_captions,
    )  # fmt: skip
    if args.reuse:
        splits = [("pretrain", args.num_pretrain), ("sft", args.num_sft)]
        complete = all(
            (Path(args.out) / task / split / "index.json").is_file()
            for task, n in splits
            for split, m in (("train", n), ("val", args.num_val))
            if m > 0
        )
        if complete and recorded_params(args.out) == params:
            print(f"{args.out}: generated with the same parameters already; kept")
            return
        args.overwrite = True
    summaries = generate(
        args.out,
        num_pretrain=args.num_pretrain,
        num_sft=args.num_sft,
        num_val=args.num_val,
        seed=args.seed,
        max_side=args.max_side or None,
        shard_size=args.shard_size,
        workers=args.workers,
        text_only=args.text_only,
        overwrite=args.overwrite,
        max_turns=args.max_turns,
        turns=args.turns,
        shuffled_captions=args.shuffled_captions,
        answers=args.answers,
        shape_first_captions=args.shape_first_captions,
        cache=args.cache if args.cache is not None else True,
    )
    for name, summary in summaries.items():
        print(f"{name}: {summary.line()}")


if __name__ == "__main__":
    main()
