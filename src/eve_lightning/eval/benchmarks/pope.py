"""POPE: object-hallucination yes/no questions on COCO, in three sampling settings.

Expected files under ``data.root`` (the POPE release, github.com/AoiDragon/POPE, ``output/coco``)::

    coco_pope_adversarial.json   one JSON object per line: {"question_id", "image", "text", "label": "yes"|"no"}
    coco_pope_popular.json
    coco_pope_random.json
    val2014/COCO_val2014_<n>.jpg                             (the COCO val2014 images)

``split=all`` runs the three settings (``split=random`` etc. runs one). Metrics per setting (yes is the positive
class): accuracy, precision, recall, F1 and yes-ratio, in percent; ``f1`` and ``accuracy`` without a prefix are
the means over the settings run (the paper's POPE number is the mean F1). Free answers are read with
``metrics.parse_yes_no`` (first word yes/no, else a negation word means no); ``unparsed`` counts empty answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question, Scores, percent, read_jsonl
from eve_lightning.eval.metrics import binary_metrics, mean, parse_yes_no

CATEGORIES = ("adversarial", "popular", "random")


@dataclass
class POPE(Benchmark):
    """POPE on COCO (see the module docstring for the files)."""

    name = "pope"

    split: str = "all"
    file_pattern: str = "coco_pope_{category}.json"
    image_dir: str = "val2014"

    @property
    def categories(self) -> tuple[str, ...]:
        if self.split == "all":
            return CATEGORIES
        if self.split not in CATEGORIES:
            raise BenchmarkDataError(f"unknown POPE split {self.split!r}: use all, {', '.join(CATEGORIES)}")
        return (self.split,)

    def load(self) -> list[Question]:
        image_dir = self.path(self.image_dir, "val2014")
        out = []
        for cat in self.categories:
            path = self.path(self.file_pattern.format(category=cat), "")
            for r in read_jsonl(path, '{"question_id", "image", "text", "label"} lines from the POPE release'):
                meta = {"category": cat, "label": str(r["label"]).strip().lower()}
                qid = f"{cat}/{r['question_id']}"
                out.append(Question(qid, self.with_suffix(r["text"]), image_dir / r["image"], meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        metrics: dict[str, float] = {}
        counts = {"questions": 0, "unparsed": 0}
        per_cat = []
        for cat in self.categories:
            qs = [q for q in questions if q.meta["category"] == cat and q.qid in answers]
            if not qs:
                continue
            preds = [parse_yes_no(answers[q.qid]) for q in qs]
            m = binary_metrics(preds, [q.meta["label"] for q in qs])
            per_cat.append(m)
            metrics.update({f"{cat}/{k}": percent(v) for k, v in m.items()})
            counts[f"{cat}/questions"] = len(qs)
            counts["questions"] += len(qs)
            counts["unparsed"] += sum(p is None for p in preds)
        for key in ("f1", "accuracy"):
            metrics[key] = percent(mean(m[key] for m in per_cat))
        return Scores(dict(sorted(metrics.items())), counts)
