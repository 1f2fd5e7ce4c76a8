"""GQA: compositional questions on real images, scored by exact match (the paper uses testdev-balanced).

Expected files under ``data.root`` (the public GQA release, cs.stanford.edu/people/dorarad/gqa)::

    <split>_questions.json      {"<question id>": {"imageId", "question", "answer", "types": {"structural"}, ...}}
    images/<imageId>.jpg

Default split: ``testdev_balanced``. Score: percent of answers equal to the gold answer after lower-casing and
dropping a trailing period (the normalization of the original evaluation), overall and per structural type
(verify, query, choose, logical, compare). The predictions file of the GQA format
(``[{"questionId", "prediction"}]``) is written as the submission.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eve_lightning.eval.base import Benchmark, Question, Scores, percent, read_json, write_json
from eve_lightning.eval.metrics import exact_match, mean, normalize_short_answer


@dataclass
class GQA(Benchmark):
    """GQA balanced question sets (see the module docstring for the files)."""

    name = "gqa"

    split: str = "testdev_balanced"
    question_file: str | None = None
    image_dir: str = "images"

    def load(self) -> list[Question]:
        qfile = self.path(self.question_file, f"{self.split}_questions.json")
        data = read_json(qfile, '{"<id>": {"imageId", "question", "answer"}} from the GQA release')
        image_dir = self.path(self.image_dir, "images")
        out = []
        for qid, q in data.items():
            meta = {"answer": q.get("answer"), "type": (q.get("types") or {}).get("structural")}
            out.append(Question(str(qid), self.with_suffix(q["question"]), image_dir / f"{q['imageId']}.jpg", meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        overall, by_type = [], defaultdict(list)
        for q in questions:
            if q.qid not in answers or q.meta.get("answer") is None:
                continue
            hit = float(exact_match(answers[q.qid], q.meta["answer"]))
            overall.append(hit)
            if q.meta.get("type"):
                by_type[q.meta["type"]].append(hit)
        if not overall:
            return Scores(counts={"questions": len(answers)}, notes=["no gold answers in this split"])
        metrics = {"accuracy": percent(mean(overall))}
        metrics.update({f"accuracy_{t}": percent(mean(v)) for t, v in sorted(by_type.items())})
        return Scores(metrics, {"questions": len(overall)})

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        rows = [{"questionId": q.qid, "prediction": normalize_short_answer(answers.get(q.qid, ""))} for q in questions]
        return write_json(out_dir / f"gqa_{self.split}_predictions.json", rows)
