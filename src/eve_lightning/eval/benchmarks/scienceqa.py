"""ScienceQA-IMG: multiple-choice science questions that come with an image.

Expected files under ``data.root`` (the ScienceQA release, github.com/lupantech/ScienceQA, ``data/scienceqa``)::

    problems.json        {"<pid>": {"question", "choices": [...], "answer": <index>, "hint", "image": "image.png"
                          or null, "split": "train|val|test", "subject", ...}}
    pid_splits.json      {"train": [pid, ...], "val": [...], "test": [...]}   (optional: else problems' "split")
    <split>/<pid>/image.png

Default split ``test``; ``image_only=true`` keeps the image questions (the paper's SQA-IMG, 2017 on test). Prompt:
``Context: <hint>`` (when the hint is not empty), the question, ``A. <choice>`` lines and the protocol's
multiple-choice instruction. Score: percent of answers whose option letter (``metrics.parse_option_letter``) is
the right one; with ``image_only=false`` also ``accuracy_img`` on the image questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question, Scores, percent, read_json
from eve_lightning.eval.metrics import choice_hits, mean, option_letters
from eve_lightning.eval.prompts import MULTIPLE_CHOICE, choice_prompt


@dataclass
class ScienceQA(Benchmark):
    """ScienceQA (see the module docstring for the files)."""

    name = "scienceqa"

    split: str = "test"
    problems_file: str = "problems.json"
    splits_file: str | None = "pid_splits.json"
    image_dir: str | None = None
    image_only: bool = True
    suffix: str = MULTIPLE_CHOICE

    def _pids(self, problems: Mapping[str, dict]) -> list[str]:
        path = self.path(self.splits_file, "") if self.splits_file else None
        if path is not None and path.is_file():
            splits = read_json(path, '{"train": [pid ...], "val": [...], "test": [...]}')
            if self.split not in splits:
                raise BenchmarkDataError(f"{path} has no split {self.split!r} (has {sorted(splits)})")
            return [str(p) for p in splits[self.split]]
        return [pid for pid, p in problems.items() if p.get("split") == self.split]

    def load(self) -> list[Question]:
        problems = read_json(self.path(self.problems_file, ""), '{"<pid>": {"question", "choices", "answer"}}')
        image_dir = self.path(self.image_dir, self.split)
        out = []
        for pid in self._pids(problems):
            p = problems[pid]
            if self.image_only and not p.get("image"):
                continue
            letters = option_letters(len(p["choices"]))
            options = list(zip(letters, p["choices"]))
            hint = f"Context: {p['hint'].strip()}" if (p.get("hint") or "").strip() else None
            prompt = choice_prompt(p["question"], options, hint, self.suffix)
            meta = {"options": dict(options), "answer": letters[int(p["answer"])], "has_image": bool(p.get("image"))}
            image = image_dir / pid / p["image"] if p.get("image") else None
            out.append(Question(pid, prompt, image, meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        answered = [q for q in questions if q.qid in answers]
        hits, unparsed = choice_hits((answers[q.qid], q.meta["options"], q.meta["answer"]) for q in answered)
        img_hits = [h for h, q in zip(hits, answered) if q.meta["has_image"]]
        metrics = {"accuracy": percent(mean(hits))}
        if not self.image_only:
            metrics["accuracy_img"] = percent(mean(img_hits))
        return Scores(metrics, {"questions": len(hits), "image_questions": len(img_hits), "unparsed": unparsed})
