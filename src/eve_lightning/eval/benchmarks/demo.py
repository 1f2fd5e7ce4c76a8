"""The demo benchmark: held-out questions and captions of the procedural shapes data (``data.synthetic_shapes``).

Expected files under ``data.root`` (what ``make train`` or ``python -m eve_lightning.data.demo --out DIR`` writes;
default ``data/demo``)::

    raw/sft_<split>.json        [{"id", "image": "sft/val/000/000000.png" (absent: text-only),
                                  "conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}, ...]}]
    raw/pretrain_<split>.json   [{"id", "image", "caption"}]
    raw/images/<image>

Two parts (``parts``):

* ``questions``: every human turn of the held-out conversations is asked on its own (with the record's image, or
  none for text-only records). Score: exact match with the recorded answer (lower case, trailing period and
  extra spaces ignored): ``accuracy`` overall, ``accuracy_<kind>`` per question kind (``colour``, ``shape``,
  ``count``, ``position``, ``size``, ``exists``, ``describe``, ``text``) and ``accuracy_colour_shape`` over the
  colour and shape questions together, also split by the number of objects in the picture
  (``accuracy_colour_shape_<n>obj``, when the annotation records ``objects``): with one object a colour or shape
  question needs perception only, with two or three it also needs finding the object the question names.
* ``captions``: each held-out caption image is asked ``Describe the image.``. The generator's own record of
  what it drew is the ``caption`` of the annotation: ``caption()`` lists every shape as "a <size> <colour>
  <shape> <position>", so parsing it with the generator's vocabulary gives the exact sets of colours and shapes
  drawn. ``caption_accuracy``: percent of answers whose colour words (``demo.COLOURS``) are exactly the drawn
  colours and whose shape words (``demo.SHAPES``, plurals allowed) are exactly the drawn shapes: every shape and
  colour named, nothing else. ``caption_pairs_accuracy`` also wants each drawn "<colour> <shape>" pair named as
  such and no other pair. ``caption_exact``: the answer equals the recorded caption.

The demo model was trained without the protocol's instruction lines, so no suffix is added (``suffix=""``).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eve_lightning.constants import IMAGE_PLACEHOLDER
from eve_lightning.data import synthetic_shapes as generator
from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question, Scores, percent, read_json
from eve_lightning.eval.metrics import exact_match, mean

KINDS = (
    ("describe", re.compile(r"^Describe the image")),
    ("count", re.compile(r"^How many shapes")),
    ("colour", re.compile(r"^What colou?r is the")),
    ("shape", re.compile(r"^What shape is the")),
    ("position", re.compile(r"^Where is the")),
    ("size", re.compile(r"small or large\?$")),
    ("exists", re.compile(r"^Is there an? ")),
)
_DRAWN = re.compile(
    rf"\b({'|'.join(generator.SIZES)}) ({'|'.join(generator.COLOURS)}) ({'|'.join(generator.SHAPES)})\b"
)
_WORD = re.compile(r"[a-z]+")
_SHAPE_FIRST = re.compile(
    rf"\b({'|'.join(generator.SHAPES)}) that is ({'|'.join(generator.SIZES)}) and ({'|'.join(generator.COLOURS)})\b"
)


def question_kind(question: str, has_image: bool) -> str:
    """Kind of a demo question, from the generator's question templates (text-only questions: ``text``)."""
    if not has_image:
        return "text"
    for kind, pattern in KINDS:
        if pattern.search(question):
            return kind
    return "other"


def drawn_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) of every shape a demo caption records, checked against its count word.

    Raises:
        BenchmarkDataError: the text is not a caption written by ``eve_lightning.data.synthetic_shapes.caption``.
    """
    found = [(m.group(2), m.group(3)) for m in _DRAWN.finditer(caption.lower())]
    count = caption.split(" ", 1)[0].lower()
    if not found or count not in generator.COUNT_WORDS or generator.COUNT_WORDS.index(count) + 1 != len(found):
        raise BenchmarkDataError(f"not a demo caption (cannot tell what was drawn): {caption!r}")
    return found


def named_objects(text: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """Colour words, shape words (plurals folded) and the (colour, shape) pairs a text names.

    Pairs: adjacent "<colour> <shape>", or "<shape> that is <size> and <colour>" (the shape-first caption form).
    """
    words = []
    for w in _WORD.findall(text.lower()):
        words.append(w[:-1] if w.endswith("s") and w[:-1] in generator.SHAPES else w)
    colours = {w for w in words if w in generator.COLOURS}
    shapes = {w for w in words if w in generator.SHAPES}
    pairs = {(a, b) for a, b in itertools.pairwise(words) if a in generator.COLOURS and b in generator.SHAPES}
    pairs |= {(m.group(3), m.group(1)) for m in _SHAPE_FIRST.finditer(" ".join(words))}
    return colours, shapes, pairs


def caption_check(prediction: str, caption: str) -> tuple[bool, bool]:
    """(names exactly the drawn colours and shapes, also pairs them exactly) for one caption image."""
    drawn = drawn_objects(caption)
    colours, shapes, pairs = named_objects(prediction)
    sets_ok = colours == {c for c, _ in drawn} and shapes == {s for _, s in drawn}
    return sets_ok, sets_ok and pairs == set(drawn)


@dataclass
class DemoBenchmark(Benchmark):
    """Held-out demo data (see the module docstring for the files and metrics)."""

    name = "demo"

    split: str = "val"
    parts: tuple[str, ...] = ("questions", "captions")
    text_only: bool = True
    caption_prompt: str = "Describe the image."
    suffix: str = ""

    def load(self) -> list[Question]:
        unknown = set(self.parts) - {"questions", "captions"}
        if unknown:
            raise BenchmarkDataError(f"unknown demo parts {sorted(unknown)}: use questions, captions")
        raw = Path(self.root) / "raw"
        out: list[Question] = []
        if "questions" in self.parts:
            out += self._questions(raw)
        if "captions" in self.parts:
            out += self._captions(raw)
        return out

    def _questions(self, raw: Path) -> list[Question]:
        records = read_json(raw / f"sft_{self.split}.json", "the demo conversations (run `make train` first)")
        out = []
        for rec in records:
            image = raw / "images" / rec["image"] if rec.get("image") else None
            if image is None and not self.text_only:
                continue
            turns = rec["conversations"]
            for t in range(0, len(turns) - 1, 2):
                question = turns[t]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
                meta = {"answer": turns[t + 1]["value"], "kind": question_kind(question, image is not None)}
                if rec.get("objects") is not None:
                    meta["objects"] = int(rec["objects"])
                out.append(Question(f"{rec['id']}/{t // 2}", self.with_suffix(question), image, meta))
        return out

    def _captions(self, raw: Path) -> list[Question]:
        records = read_json(raw / f"pretrain_{self.split}.json", "the demo captions (run `make train` first)")
        out = []
        for rec in records:
            drawn_objects(rec["caption"])  # refuse files that are not the generator's
            meta = {"caption": rec["caption"], "kind": "caption_check"}
            prompt = self.with_suffix(self.caption_prompt)
            out.append(Question(f"{rec['id']}/caption", prompt, raw / "images" / rec["image"], meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        hits: list[float] = []
        by_kind: dict[str, list[float]] = defaultdict(list)
        by_objects: dict[int, list[float]] = defaultdict(list)
        caption_sets, caption_pairs, caption_exact = [], [], []
        for q in questions:
            if q.qid not in answers:
                continue
            pred = answers[q.qid]
            if q.meta["kind"] == "caption_check":
                sets_ok, pairs_ok = caption_check(pred, q.meta["caption"])
                caption_sets.append(float(sets_ok))
                caption_pairs.append(float(pairs_ok))
                caption_exact.append(float(exact_match(pred, q.meta["caption"])))
                continue
            hit = float(exact_match(pred, q.meta["answer"]))
            hits.append(hit)
            by_kind[q.meta["kind"]].append(hit)
            if q.meta["kind"] in ("colour", "shape") and "objects" in q.meta:
                by_objects[q.meta["objects"]].append(hit)
        metrics: dict[str, float] = {}
        if hits:
            metrics["accuracy"] = percent(mean(hits))
            metrics.update({f"accuracy_{k}": percent(mean(v)) for k, v in sorted(by_kind.items())})
            colour_shape = by_kind["colour"] + by_kind["shape"]
            if colour_shape:
                metrics["accuracy_colour_shape"] = percent(mean(colour_shape))
            metrics.update({f"accuracy_colour_shape_{n}obj": percent(mean(v)) for n, v in sorted(by_objects.items())})
        if caption_sets:
            metrics["caption_accuracy"] = percent(mean(caption_sets))
            metrics["caption_pairs_accuracy"] = percent(mean(caption_pairs))
            metrics["caption_exact"] = percent(mean(caption_exact))
        return Scores(metrics, {"questions": len(hits), "captions": len(caption_sets)})
