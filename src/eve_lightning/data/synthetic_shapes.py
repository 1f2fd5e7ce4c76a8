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
the block's shard itself (the picture is resized from memory, only around its shapes, instead of being decoded
back from its file), so only the annotation text goes back to the parent. The files are byte for byte what the
plain pipeline writes (every PNG saved, then ``make_shards`` over them). ``--cache DIR`` (or
``$EVE_LIGHTNING_DEMO_CACHE``) keeps generated sets by a content key (``DemoCache``) and links a set back into
place when the same one is asked for again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
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


def _render(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw a scene; also return a box (x0, y0, x1, y1) that holds every pixel of a shape.

    Pillow draws a shape within the whole pixels of its coordinates (it truncates them); the box adds a margin.
    """
    img = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(img)
    long_side = scene.height if scene.portrait else scene.width
    short_side = scene.width if scene.portrait else scene.height
    cell = long_side / 3
    x0, y0, x1, y1 = scene.width, scene.height, 0, 0
    for spec in scene.shapes:
        extent = min(cell, short_side) * (0.8 if spec.size == "large" else 0.4)
        room_long, room_short = (cell - extent) / 2, (short_side - extent) / 2
        c_long = (spec.slot + 0.5) * cell + rng.uniform(-0.5, 0.5) * room_long
        c_short = short_side / 2 + rng.uniform(-0.3, 0.3) * room_short
        cx, cy = (c_short, c_long) if scene.portrait else (c_long, c_short)
        h = extent / 2
        colour = COLOURS[spec.colour]
        if spec.shape == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=colour)
        elif spec.shape == "square":
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=colour)
        elif spec.shape == "triangle":
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=colour)
        else:
            draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=colour)
        x0, y0 = min(x0, int(cx - h) - SHAPE_MARGIN), min(y0, int(cy - h) - SHAPE_MARGIN)
        x1, y1 = max(x1, int(cx + h) + SHAPE_MARGIN + 1), max(y1, int(cy + h) + SHAPE_MARGIN + 1)
    box = (max(x0, 0), max(y0, 0), min(x1, scene.width), min(y1, scene.height))
    return img, box


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
    """A drawn scene: its image, its background colour and a box (x0, y0, x1, y1) around every shape."""

    image: Image.Image
    background: tuple[int, int, int]
    box: tuple[int, int, int, int]


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
    image, box = _render(scene, rng)  # draws the jitter: before the text's draws
    picture = Picture(image, scene.background, box)
    if task == "pretrain":
        shuffled = shuffled_captions > 0 and rng.random() < shuffled_captions  # no draw: the default stream stays
        order = rng.permutation(len(scene.shapes)) if shuffled else None
        shape_first = shape_first_captions > 0 and split == "train" and rng.random() < shape_first_captions
        return {"id": rid, "image": rel, "caption": caption(scene, order, shape_first)}, picture
    qa = question_items(scene, rng, answers)
    conv = []
    for turn, i in enumerate(pick_turns(qa, rng, max_turns, turns)):
        q, a, _ = qa[i]
        if turn == 0:  # the image placeholder sits before or after the first question, as in LLaVA data
            q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    record = {"id": rid, "image": rel, "conversations": conv, "objects": len(scene.shapes)}  # objects: for scoring
    return record, picture


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
        _write_new(path, png_bytes(picture.image))
    return record


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of a drawn picture, as the raw set stores it (zlib level 1: fast, re-encoded into the shards)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


_RESIZE_ORDERS: dict[tuple[int, int, int, int], str | None] = {}  # (w, h, w2, h2) -> "hv", "vh" or None
_BICUBIC = Image.Resampling.BICUBIC


def _plain_bbox(image: Image.Image, colour: tuple[int, ...] | int) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) around the pixels of ``image`` that are not ``colour``; None when all are."""
    bands = colour if isinstance(colour, tuple) else (colour,)
    return image.point([int(v != c) for c in bands for v in range(256)]).getbbox()


def _reach(start: int, stop: int, size: int, new_size: int) -> tuple[int, int]:
    """The output pixels of a bicubic pass from ``size`` to ``new_size`` px that input pixels [start, stop) reach.

    Pillow's output pixel ``i`` reads the input pixels within ``support`` of its centre ``(i + 0.5) * scale``
    (rounded outwards here, with a pixel to spare): a range that holds every output pixel they change.
    """
    scale = size / new_size
    support = 2.0 * max(scale, 1.0)  # the bicubic kernel's radius, stretched when shrinking
    first = math.floor((start - support - 0.5) / scale - 0.5) - 1
    last = math.ceil((stop + support + 0.5) / scale - 0.5) + 1
    return max(first, 0), min(last, new_size)


def _resize_hv(
    image: Image.Image, size: tuple[int, int], plain: tuple[int, ...], box: tuple[int, int, int, int] | None
) -> Image.Image:
    """Pillow's bicubic resize, horizontal pass first, run only where ``image`` is not all ``plain``.

    ``box`` holds every pixel of another colour than ``plain`` (None: found from the pixels). Each pass treats every
    row (column) on its own and keeps a plain row (column) plain, so the horizontal pass runs on the rows of the
    box, the vertical pass on the columns whose result is not plain; the rest of the picture is ``plain``.
    """
    (w, h), (w2, h2) = image.size, size
    box = _plain_bbox(image, plain) if box is None else box
    out = Image.new(image.mode, size, plain)
    if box is None or box[1] >= box[3]:
        return out
    y0, y1 = box[1], box[3]
    band = image.crop((0, y0, w, y1))  # the rows that hold a shape, whole
    if w2 != w:
        band = band.resize((w2, y1 - y0), _BICUBIC)
    if h2 == h:
        out.paste(band, (0, y0))
        return out
    x0, x1 = _reach(box[0], box[2], w, w2) if w2 != w else (box[0], box[2])
    strip = Image.new(image.mode, (x1 - x0, h), plain)  # the columns that hold a shape, whole
    strip.paste(band.crop((x0, 0, x1, y1 - y0)), (0, y0))
    out.paste(strip.resize((x1 - x0, h2), _BICUBIC), (x0, 0))
    return out


def _resize_in_order(
    image: Image.Image,
    size: tuple[int, int],
    order: str,
    plain: tuple[int, ...] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """``_resize_hv``, or for ``order`` "vh" the same steps on the transposed picture (vertical pass first).

    ``plain``: the background colour (None: the corner's, and ``box`` found from the pixels).
    """
    if plain is None:
        plain, box = image.getpixel((0, 0)), None
    if order == "hv":
        return _resize_hv(image, size, plain, box)
    flip = Image.Transpose.TRANSPOSE
    turned = None if box is None else (box[1], box[0], box[3], box[2])
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
) -> Image.Image:
    """``image.resize(size, BICUBIC)``, byte for byte, computed only around the shapes of a drawn picture.

    A drawn picture is a plain ``background`` with a few shapes inside ``box`` (a ``Picture``'s); without them the
    background is the corner's colour and the box is found from the pixels. Only the rows and columns around the
    shapes go through Pillow's passes (``_resize_hv``), in the order this Pillow uses for these sizes
    (``_resize_order``).
    """
    order = _resize_order(image.size, size) if image.size != size else None
    if order is None:
        return image.resize(size, _BICUBIC)
    return _resize_in_order(image, size, order, background, box if background is not None else None)


def shard_image(image: Image.Image | Picture, png: bytes, max_side: int | None) -> tuple[str, bytes, int, int]:
    """The shard member of a drawn picture: (extension, bytes, width, height), as ``make_shards`` stores its PNG.

    Same result as ``records.prepare_record`` reading ``png`` from disk: at ``max_side`` the picture is resized to
    its EVE band size and stored as JPEG; a picture already of that size (or ``max_side`` None) keeps its PNG.
    """
    picture = image if isinstance(image, Picture) else None
    image = picture.image if picture is not None else image
    width, height = image.size
    target = (width, height)
    if max_side is not None:
        geom = band_geometry(width, height, max_side)
        target = (geom.eve.width, geom.eve.height)
    if target == (width, height):
        return "png", png, width, height
    resized = (
        resize_bicubic(image, target)
        if picture is None
        else resize_bicubic(image, target, picture.background, picture.box)
    )
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=JPEG_QUALITY)
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


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path``: a file there is replaced, never written through (it may be linked)."""
    path.unlink(missing_ok=True)
    with open(path, "xb") as f:
        f.write(data)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_block(block: _Block) -> _BlockResult:
    """Draw a block's samples, write their pictures and their shard (in a worker process); return the rest.

    The shard is written in a folder of its own with the regular writer, then moved to its place in the split.
    """
    sp = block.split
    content = dict(sp.content)
    images = Path(sp.root) / "raw" / "images"
    part = sp.shard_dir / f"{PART_PREFIX}{block.shard:06d}"
    writer = ShardWriter(part, shard_size=block.stop - block.start, max_shard_bytes=DEFAULT_SHARD_BYTES)
    records, pictures = [], []
    folder = None
    for i in range(block.start, block.stop):
        record, picture = draw_sample(i, task=sp.task, split=sp.split, seed=sp.seed, **content)
        records.append(record)
        member = None
        if picture is not None:
            pictures.append(i)
            png = png_bytes(picture.image)
            path = images / record["image"]
            if path.parent != folder:
                folder = path.parent
                folder.mkdir(parents=True, exist_ok=True)
            _write_new(path, png)
            member = shard_image(picture, png, sp.max_side)
        writer.add(shard_sample(i, record, member, sp.fmt))
    index = writer.close()
    annotations = json.dumps(records, indent=1)[2:-2]  # "[\n" + items + "\n]": the items, indented at level 1
    if len(index["shards"]) != 1:  # the byte limit closed a shard early: the split's shards are renumbered
        return _BlockResult(block, annotations, None, tuple(pictures))
    entry = index["shards"][0]
    name = f"shard-{block.shard:06d}.tar"
    sidecar = name[: -len(".tar")] + SIDECAR_SUFFIX
    os.replace(part / entry["file"], sp.shard_dir / name)
    os.replace(part / entry["sidecar"], sp.shard_dir / sidecar)
    (part / INDEX_FILE).unlink()
    part.rmdir()
    entry.update(file=name, sidecar=sidecar)
    return _BlockResult(block, annotations, entry, tuple(pictures))


def _run_blocks(blocks: list[_Block], workers: int) -> list[_BlockResult]:
    """Write every block, in ``workers`` processes; the longest blocks go first, so the last ones end together."""
    order = sorted(blocks, key=lambda b: b.stop - b.start, reverse=True)
    if workers <= 1 or len(order) <= 1:
        return [_write_block(b) for b in order]
    with multiprocessing.get_context("fork").Pool(min(workers, len(order))) as pool:
        return list(pool.imap_unordered(_write_block, order, chunksize=1))


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
