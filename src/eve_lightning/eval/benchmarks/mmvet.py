"""MM-Vet: open-ended questions graded by GPT-4, so only the submission file is written here.

Expected files under ``data.root`` (the MM-Vet release, github.com/yuweihao/MM-Vet, ``mm-vet.zip``)::

    mm-vet.json      {"v1_0": {"imagename": "v1_0.png", "question", "answer", "capability": [...]}, ...}
    images/v1_0.png

The question is asked as is (no instruction line; the protocol allows long answers: ``max_new_tokens=1024``).
The submission ``{"v1_0": "<answer>", ...}`` is what MM-Vet's GPT-4 grader (``mm-vet_evaluator``, or the MM-Vet
online evaluator) reads; no metric is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eve_lightning.eval.base import Benchmark, Question, Scores, read_json, write_json

GRADER_NOTE = (
    "MM-Vet is scored by an external GPT-4 grader: run MM-Vet's mm-vet_evaluator (or its online evaluator) on the "
    "submission file; no metric is computed here"
)


@dataclass
class MMVet(Benchmark):
    """MM-Vet (see the module docstring for the files)."""

    name = "mmvet"
    test_splits = ("v1",)

    split: str = "v1"
    question_file: str = "mm-vet.json"
    image_dir: str = "images"
    suffix: str = ""

    def load(self) -> list[Question]:
        data = read_json(self.path(self.question_file, ""), '{"v1_0": {"imagename", "question"}, ...}')
        image_dir = self.path(self.image_dir, "")
        out = []
        for qid, q in data.items():
            meta = {"capability": q.get("capability")}
            out.append(Question(qid, self.with_suffix(q["question"]), image_dir / q["imagename"], meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        return Scores(counts={"questions": sum(q.qid in answers for q in questions)}, notes=[GRADER_NOTE])

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        return write_json(out_dir / "mmvet_submission.json", {q.qid: answers.get(q.qid, "") for q in questions})
