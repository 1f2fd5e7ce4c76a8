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

Everything is seeded per sample: the same arguments give byte-identical shards, with any ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eve_lightning.data.make_shards import BuildSummary, build_shards
from eve_lightning.data.records import BuildOptions

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
    img = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(img)
    long_side = scene.height if scene.portrait else scene.width
    short_side = scene.width if scene.portrait else scene.height
    cell = long_side / 3
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
    return img


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


def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASK_IDS[task], SPLIT_IDS[split], index])


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
    """Generate sample ``index`` of a split: write its image (if any) and return its annotation record.

    An image conversation asks up to ``max_turns`` of the picture's questions, each once, picked as ``turns`` says
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
        return {"id": rid, "conversations": conv}
    scene = sample_scene(rng)
    rel = f"{task}/{split}/{index // 1000:03d}/{index:06d}.png"  # nested folders, like real data sets
    path = Path(images_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    render_scene(scene, rng).save(path, format="PNG", compress_level=1)  # fast: re-encoded into the shards
    if task == "pretrain":
        shuffled = shuffled_captions > 0 and rng.random() < shuffled_captions  # no draw: the default stream stays
        order = rng.permutation(len(scene.shapes)) if shuffled else None
        shape_first = shape_first_captions > 0 and split == "train" and rng.random() < shape_first_captions
        return {"id": rid, "image": rel, "caption": caption(scene, order, shape_first)}
    qa = question_items(scene, rng, answers)
    conv = []
    for turn, i in enumerate(pick_turns(qa, rng, max_turns, turns)):
        q, a, _ = qa[i]
        if turn == 0:  # the image placeholder sits before or after the first question, as in LLaVA data
            q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": rid, "image": rel, "conversations": conv, "objects": len(scene.shapes)}  # objects: for scoring


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
    """Generate one split's raw files and annotations, then write its shards.

    ``content``: what the records hold, as ``make_record``'s keyword arguments (``text_only``, ``max_turns``,
    ``turns``, ``shuffled_captions``).
    """
    images_dir = out / "raw" / "images"
    fn = partial(make_record, task=task, split=split, seed=seed, images_dir=str(images_dir), **content)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            records = pool.map(fn, range(count), chunksize=16)
    else:
        records = [fn(i) for i in range(count)]
    ann = out / "raw" / f"{task}_{split}.json"
    ann.write_text(json.dumps(records, indent=1), encoding="utf-8")
    opts = BuildOptions(fmt="caption" if task == "pretrain" else "llava", images_dir=str(images_dir), max_side=max_side)
    return build_shards(
        records, out / task / split, opts, shard_size=shard_size, workers=workers, overwrite=overwrite, progress=False
    )


def generate(
    out: str | Path,
    *,
    num_pretrain: int = 4000,
    num_sft: int = 4000,
    num_val: int = 200,
    seed: int = 0,
    max_side: int | None = 672,
    shard_size: int = 500,
    workers: int = 1,
    text_only: float = TEXT_ONLY,
    overwrite: bool = False,
    max_turns: int = 3,
    turns: str = "any",
    shuffled_captions: float = 0.0,
    answers: str = "short",
    shape_first_captions: float = 0.0,
) -> dict[str, BuildSummary]:
    """Generate the whole demo set under ``out`` and return the build summary of each ``task/split``."""
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
    summaries = {}
    for (task, split), count in plan.items():
        if count > 0:
            summaries[f"{task}/{split}"] = generate_split(
                root, task, split, count, seed=seed, max_side=max_side, shard_size=shard_size,
                workers=workers, overwrite=overwrite, text_only=text_only, max_turns=max_turns, turns=turns,
                shuffled_captions=shuffled_captions, answers=answers, shape_first_captions=shape_first_captions,
            )  # fmt: skip
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
    p.add_argument("--shard-size", type=int, default=500, help="samples per shard")
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
    )
    for name, summary in summaries.items():
        print(f"{name}: {summary.line()}")


if __name__ == "__main__":
    main()
