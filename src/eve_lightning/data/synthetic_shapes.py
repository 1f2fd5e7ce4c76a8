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
them go through zlib once for all pictures of a size (``data.png_encoder``), and the resize runs only around the
shapes, from Pillow's own weights (``data.bicubic_resize``). ``--cache DIR`` (or ``$EVE_LIGHTNING_DEMO_CACHE``)
keeps generated sets by a content key (``DemoCache``) and links a set back into place when the same one is asked
for again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, features

from eve_lightning.data.bicubic_resize import _resize_order, resize_bicubic
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
from eve_lightning.data.png_encoder import PNG_LEVEL, Box, PngEncoder, _PngJob, union_box
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
PART_PREFIX = ".part-"  # a block's shard is written in a folder of this name, then moved into its split
SHARD_SIZE = 500  # samples per shard (and per block of work)
SHAPE_MARGIN = 2  # px around a shape's coordinates that its drawn pixels stay within
GENERATOR_VERSION = 1  # part of the cache key: raise it whenever the files written for the same parameters change
CACHE_ENV = "EVE_LIGHTNING_DEMO_CACHE"  # a folder for generated sets, reused when the same set is asked for again


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
    return Sketch(scene, tuple(strokes), union_box(parts), tuple(parts))


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
    from eve_lightning.data import bicubic_resize, conversation, geometry, make_shards, png_encoder, records, shards

    digest = hashlib.sha256()
    code = (bicubic_resize, png_encoder, records, make_shards, shards, conversation, geometry, constants)
    for module in (sys.modules[__name__], *code):
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


def is_demo_split(folder: str | Path) -> bool:
    """Whether ``folder`` is a split of a generated demo set (``ROOT/<task>/<split>`` under a root it marked)."""
    root = Path(folder).parent.parent
    return (root / MARKER_FILE).is_file() or (root / PARAMS_FILE).is_file()


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
