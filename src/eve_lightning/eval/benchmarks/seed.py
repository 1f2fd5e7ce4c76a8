"""SEED-Bench (v1): multiple-choice questions; the image questions are evaluated (the video ones are skipped).

Expected files under ``data.root`` (the SEED-Bench release, huggingface.co/datasets/AILab-CVC/SEED-Bench)::

    SEED-Bench.json      {"question_type": {"Scene Understanding": 1, ...},
                          "questions": [{"question_id", "question", "choice_a" .. "choice_d", "answer": "A",
                                         "data_id": "<image file>", "data_type": "image"|"video",
                                         "question_type_id"}, ...]}
    SEED-Bench-image/<data_id>          (``.jpg`` is tried when data_id has no extension)

Prompt: the question, ``A. ..`` to ``D. ..`` and the multiple-choice instruction. Score: percent of right option
letters (``metrics.parse_option_letter``) over the image questions, overall (the paper's number) and per question
type.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eve_lightning.eval.base import Benchmark, Question, Scores, find_image, percent, read_json
from eve_lightning.eval.metrics import choice_hits, mean
from eve_lightning.eval.prompts import MULTIPLE_CHOICE, choice_prompt


@dataclass
class SEEDBench(Benchmark):
    """SEED-Bench image questions (see the module docstring for the files)."""

    name = "seed"

    split: str = "image"
    question_file: str = "SEED-Bench.json"
    image_dir: str = "SEED-Bench-image"
    suffix: str = MULTIPLE_CHOICE

    def load(self) -> list[Question]:
        data = read_json(self.path(self.question_file, ""), '{"question_type": {...}, "questions": [...]}')
        type_names = {int(v): k for k, v in (data.get("question_type") or {}).items()}
        image_dir = self.path(self.image_dir, "")
        out = []
        for q in data["questions"]:
            if q.get("data_type", "image") != "image":
                continue
            options = [(c, q[f"choice_{c.lower()}"]) for c in "ABCD" if q.get(f"choice_{c.lower()}")]
            type_id = q.get("question_type_id")
            meta = {
                "options": dict(options),
                "answer": str(q["answer"]).strip().upper(),
                "type": type_names.get(int(type_id), str(type_id)) if type_id is not None else None,
            }
            prompt = choice_prompt(q["question"], options, None, self.suffix)
            out.append(Question(str(q["question_id"]), prompt, find_image(image_dir, str(q["data_id"])), meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        answered = [q for q in questions if q.qid in answers]
        hits, unparsed = choice_hits((answers[q.qid], q.meta["options"], q.meta["answer"]) for q in answered)
        by_type = defaultdict(list)
        for hit, q in zip(hits, answered):
            if q.meta["type"]:
                by_type[q.meta["type"]].append(hit)
        metrics = {"accuracy": percent(mean(hits))}
        metrics.update({f"type/{t.lower().replace(' ', '_')}": percent(mean(v)) for t, v in sorted(by_type.items())})
        return Scores(metrics, {"questions": len(hits), "unparsed": unparsed})
