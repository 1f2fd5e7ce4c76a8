"""Open-ended VQA with 10 human answers per question: VQAv2, VizWiz-VQA and TextVQA, scored by VQA accuracy.

Expected files under ``data.root`` (the public releases, unchanged):

VQAv2 (visualqa.org)::

    v2_OpenEnded_mscoco_<split>_questions.json   {"questions": [{"question_id", "image_id", "question"}, ...]}
    v2_mscoco_<split>_annotations.json           {"annotations": [{"question_id", "answer_type",
                                                  "answers": [{"answer": ...} x 10], ...}]}  (not for test)
    <image split>/COCO_<image split>_<image_id:012d>.jpg    (test-dev2015 images live in test2015/)

  Splits: ``val2014`` (scored here), ``test-dev2015`` and ``test2015`` (submission file for the EvalAI server;
  ``all_questions_file`` = the test2015 question file fills questions you did not run with empty answers, as the
  server wants every test2015 question).

VizWiz-VQA (vizwiz.org)::

    Annotations/<split>.json    [{"image": "VizWiz_val_00000000.jpg", "question", "answer_type",
                                  "answers": [{"answer": ...} x 10]}, ...]   (test.json has no answers)
    <split>/VizWiz_<split>_<n>.jpg

  The prompt adds the protocol's "respond with 'Unanswerable'" line. ``test`` writes the submission file.

TextVQA 0.5.1 (textvqa.org)::

    TextVQA_0.5.1_<split>.json                 {"data": [{"question_id", "image_id", "question",
                                                "answers": [10 strings]}, ...]}
    TextVQA_Rosetta_OCR_v0.2_<split>.json      {"data": [{"image_id", "ocr_tokens": [...]}, ...]} (ocr_tokens=true)
    train_images/<image_id>.jpg                (train and val; test images in test_images/)

  ``ocr_tokens=true`` adds a "Reference OCR token: a, b, c" line to the prompt (the protocol's OCR variant).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eve_lightning.eval.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    Scores,
    percent,
    read_json,
    write_json,
)
from eve_lightning.eval.metrics import mean, normalize_vqa_answer, vqa_accuracy
from eve_lightning.eval.prompts import SHORT_ANSWER, UNANSWERABLE


def _human_answers(entry: Mapping[str, Any]) -> list[str]:
    """The human answers of a record: a list of strings or of {"answer": ...} objects."""
    return [a["answer"] if isinstance(a, Mapping) else str(a) for a in entry.get("answers") or []]


def score_vqa(questions: Sequence[Question], answers: Mapping[str, str], by: str | None = None) -> Scores:
    """VQA accuracy (percent) over the answered questions, overall and per ``meta[by]`` value.

    Args:
        questions: questions whose ``meta["answers"]`` holds the human answers.
        answers: question id -> model answer.
        by: a meta key to break the accuracy down by (``answer_type``), or None.
    """
    overall, groups = [], defaultdict(list)
    for q in questions:
        if q.qid not in answers:
            continue
        acc = vqa_accuracy(answers[q.qid], q.meta["answers"])
        overall.append(acc)
        if by and q.meta.get(by):
            groups[q.meta[by]].append(acc)
    metrics = {"accuracy": percent(mean(overall))}
    for key in sorted(groups):
        metrics[f"accuracy_{key.replace('/', '_').replace(' ', '_')}"] = percent(mean(groups[key]))
    return Scores(metrics, {"questions": len(overall)})


@dataclass
class VQAv2(Benchmark):
    """VQAv2 open-ended questions (see the module docstring for the files)."""

    name = "vqav2"
    test_splits = ("test-dev2015", "test2015")

    split: str = "val2014"
    question_file: str | None = None
    annotation_file: str | None = None
    image_dir: str | None = None
    all_questions_file: str | None = None

    @property
    def image_split(self) -> str:
        return "test2015" if self.split.startswith("test") else self.split

    def load(self) -> list[Question]:
        what = '{"questions": [{"question_id", "image_id", "question"}]} from visualqa.org'
        qfile = self.path(self.question_file, f"v2_OpenEnded_mscoco_{self.split}_questions.json")
        raw = read_json(qfile, what)["questions"]
        annotations: dict[int, dict[str, Any]] = {}
        if self.has_answers:
            afile = self.path(self.annotation_file, f"v2_mscoco_{self.split}_annotations.json")
            annotations = {a["question_id"]: a for a in read_json(afile, "VQAv2 annotations")["annotations"]}
        image_dir = self.path(self.image_dir, self.image_split)
        out = []
        for q in raw:
            meta: dict[str, Any] = {"question_id": q["question_id"]}
            if self.has_answers:
                ann = annotations.get(q["question_id"])
                if ann is None:
                    raise BenchmarkDataError(f"question {q['question_id']} of {qfile} has no annotation")
                meta.update(answers=_human_answers(ann), answer_type=ann.get("answer_type"))
            image = image_dir / f"COCO_{self.image_split}_{int(q['image_id']):012d}.jpg"
            out.append(Question(str(q["question_id"]), self.with_suffix(q["question"]), image, meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        if not self.has_answers:
            return Scores(counts={"questions": len(answers)}, notes=[f"{self.split}: upload the submission to EvalAI"])
        return score_vqa(questions, answers, by="answer_type")

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        rows = {q.meta["question_id"]: normalize_vqa_answer(answers.get(q.qid, "")) for q in questions}
        if self.all_questions_file:
            every = read_json(self.path(self.all_questions_file, ""), "the test2015 question file")["questions"]
            for q in every:
                rows.setdefault(q["question_id"], "")
        result = [{"question_id": qid, "answer": text} for qid, text in rows.items()]
        return write_json(out_dir / f"vqav2_{self.split}_submission.json", result)


@dataclass
class VizWiz(Benchmark):
    """VizWiz-VQA (see the module docstring for the files)."""

    name = "vizwiz"
    test_splits = ("test",)

    split: str = "val"
    annotation_file: str | None = None
    image_dir: str | None = None
    suffix: str = f"{UNANSWERABLE}\n{SHORT_ANSWER}"

    def load(self) -> list[Question]:
        afile = self.path(self.annotation_file, f"Annotations/{self.split}.json")
        records = read_json(afile, '[{"image", "question", "answers"}] from vizwiz.org')
        image_dir = self.path(self.image_dir, self.split)
        out = []
        for r in records:
            meta: dict[str, Any] = {"image": r["image"]}
            if self.has_answers:
                meta.update(answers=_human_answers(r), answer_type=r.get("answer_type"))
            out.append(Question(r["image"], self.with_suffix(r["question"]), image_dir / r["image"], meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        if not self.has_answers:
            return Scores(counts={"questions": len(answers)}, notes=["test: upload the submission to EvalAI"])
        return score_vqa(questions, answers, by="answer_type")

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        rows = [{"image": q.meta["image"], "answer": normalize_vqa_answer(answers.get(q.qid, ""))} for q in questions]
        return write_json(out_dir / f"vizwiz_{self.split}_submission.json", rows)


@dataclass
class TextVQA(Benchmark):
    """TextVQA 0.5.1 (see the module docstring for the files)."""

    name = "textvqa"
    test_splits = ("test",)

    split: str = "val"
    question_file: str | None = None
    ocr_file: str | None = None
    image_dir: str | None = None
    ocr_tokens: bool = False

    def _ocr(self) -> dict[str, list[str]]:
        ofile = self.path(self.ocr_file, f"TextVQA_Rosetta_OCR_v0.2_{self.split}.json")
        data = read_json(ofile, '{"data": [{"image_id", "ocr_tokens"}]} (the Rosetta OCR release)')["data"]
        return {d["image_id"]: list(d.get("ocr_tokens") or []) for d in data}

    def load(self) -> list[Question]:
        qfile = self.path(self.question_file, f"TextVQA_0.5.1_{self.split}.json")
        data = read_json(qfile, '{"data": [{"question_id", "image_id", "question", "answers"}]}')["data"]
        ocr = self._ocr() if self.ocr_tokens else {}
        image_dir = self.path(self.image_dir, "test_images" if self.split == "test" else "train_images")
        out = []
        for d in data:
            text = d["question"].strip()
            if self.ocr_tokens:
                tokens = d.get("ocr_tokens") or ocr.get(d["image_id"], [])
                text += "\nReference OCR token: " + ", ".join(tokens)
            meta: dict[str, Any] = {"question_id": d["question_id"]}
            if self.has_answers:
                meta["answers"] = _human_answers(d)
            image = image_dir / f"{d['image_id']}.jpg"
            out.append(Question(str(d["question_id"]), self.with_suffix(text), image, meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        if not self.has_answers:
            return Scores(counts={"questions": len(answers)}, notes=["test: upload the submission to EvalAI"])
        return score_vqa(questions, answers)

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        rows = [
            {"question_id": q.meta["question_id"], "answer": normalize_vqa_answer(answers.get(q.qid, ""))}
            for q in questions
        ]
        return write_json(out_dir / f"textvqa_{self.split}_submission.json", rows)
