"""MME: yes/no questions, two per image, in perception and cognition subtasks.

Expected layout under ``data.root`` (the ``MME_Benchmark_release_version`` folder, unchanged): one folder per
subtask, in either of the release's two layouts::

    <subtask>/<image>.jpg|png + <subtask>/<image>.txt                    (existence, count, position, color, OCR,
                                                                         and the cognition subtasks)
    <subtask>/images/<image>.jpg + <subtask>/questions_answers_YN/<image>.txt   (artwork, celebrity, landmark,
                                                                         posters, scene)

Each ``.txt`` holds one ``question<TAB>Yes|No`` line per question (two per image).

``split``: ``perception`` (the paper's MME-P: 10 subtasks), ``cognition`` (4) or ``all``; ``subtasks`` picks a
subset. Score per subtask: acc (percent of questions right) + acc+ (percent of images with both questions
right); ``perception`` / ``cognition`` are the sums over the subtasks run (perception at most 2000). An answer
counts only when its first word is yes or no (``parse_yes_no(strict=True)``), as in MME's own calculator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question, Scores
from eve_lightning.eval.metrics import mme_subtask_score, parse_yes_no

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")


def _image_for(folder: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    raise BenchmarkDataError(f"no image {stem}.jpg|png in {folder} for its question file")


@dataclass
class MME(Benchmark):
    """MME perception / cognition (see the module docstring for the layout)."""

    name = "mme"

    split: str = "perception"
    subtasks: list[str] | None = None

    def selected(self) -> list[str]:
        if self.subtasks:
            unknown = sorted(set(self.subtasks) - set(PERCEPTION + COGNITION))
            if unknown:
                raise BenchmarkDataError(f"unknown MME subtasks {unknown}: use {list(PERCEPTION + COGNITION)}")
            return list(self.subtasks)
        return {"perception": list(PERCEPTION), "cognition": list(COGNITION), "all": [*PERCEPTION, *COGNITION]}[
            self.split
        ]

    def load(self) -> list[Question]:
        out = []
        for task in self.selected():
            folder = Path(self.root) / task
            if not folder.is_dir():
                raise BenchmarkDataError(f"{folder} not found: expected an MME subtask folder (docs/evaluation.md)")
            nested = (folder / "questions_answers_YN").is_dir()
            text_dir, image_dir = (folder / "questions_answers_YN", folder / "images") if nested else (folder, folder)
            files = sorted(text_dir.glob("*.txt"))
            if not files:
                raise BenchmarkDataError(f"{text_dir} holds no question files (<image>.txt)")
            for txt in files:
                out += self._questions(task, txt, _image_for(image_dir, txt.stem))
        return out

    def _questions(self, task: str, txt: Path, image: Path) -> list[Question]:
        lines = [line for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        out = []
        for i, line in enumerate(lines):
            question, tab, label = line.rpartition("\t")
            if not tab or label.strip().lower() not in ("yes", "no"):
                raise BenchmarkDataError(f"{txt} line {i + 1}: expected 'question<TAB>Yes|No'")
            meta = {"subtask": task, "label": label.strip().lower()}
            group = f"{task}/{txt.stem}"
            out.append(Question(f"{group}/{i}", self.with_suffix(question), image, meta, group=group))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        unparsed = 0
        for q in questions:
            if q.qid not in answers:
                continue
            pred = parse_yes_no(answers[q.qid], strict=True)
            unparsed += pred is None
            by_task[q.meta["subtask"]][q.group or q.qid].append(pred == q.meta["label"])
        metrics: dict[str, float] = {}
        totals = {"perception": 0.0, "cognition": 0.0}
        for task, images in by_task.items():
            s = mme_subtask_score(images)
            metrics.update({f"{task}/{k}": round(v, 4) for k, v in s.items()})
            totals["perception" if task in PERCEPTION else "cognition"] += s["score"]
        ran = set(by_task)
        if ran & set(PERCEPTION):
            metrics["perception"] = round(totals["perception"], 4)
        if ran & set(COGNITION):
            metrics["cognition"] = round(totals["cognition"], 4)
        counts = {"questions": sum(len(v) for t in by_task.values() for v in t.values()), "unparsed": unparsed}
        counts["images"] = sum(len(t) for t in by_task.values())
        return Scores(dict(sorted(metrics.items())), counts)
