"""MMBench: multiple-choice questions with circular evaluation.

Expected file under ``data.root`` (an MMBench release TSV, from opencompass/MMBench or VLMEvalKit)::

    mmbench_<split>_20230712.tsv     (or set ``tsv_file``, e.g. MMBench_DEV_EN.tsv)

Columns: ``index``, ``question``, ``hint``, ``A`` .. ``D`` (empty or ``nan`` when a question has fewer options),
``answer`` (dev only), ``category``, ``l2-category``, ``image`` (base64-encoded; a short number instead refers to
the row of that index, which holds the image), ``split`` ...

Circular evaluation: a question is asked once per rotation of its options (n options: n passes, the options
shifted by one each time, the right letter moving with its option), and counts as right only when every pass is
answered right. Release TSVs already hold the rotated copies (index + k x 1,000,000); when a TSV has none,
``circular=auto`` makes them here. ``circular=false`` asks each row once (plain accuracy).

Prompt: the hint line (when there is one), the question, ``A. ..`` lines and the multiple-choice instruction.
Dev splits are scored here: ``accuracy`` (circular, percent), ``single_pass_accuracy`` (first pass only) and the
circular accuracy per category. Every split writes the server's submission, the TSV columns (rotated where the
rows were rotated here, image dropped) plus ``prediction``, as ``.xlsx`` (the upload) and ``.tsv``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question, Scores, percent, require_file
from eve_lightning.eval.metrics import circular_accuracy, mean, parse_option_letter
from eve_lightning.eval.prompts import MULTIPLE_CHOICE, choice_prompt
from eve_lightning.eval.xlsx import write_xlsx

ROUND = 1_000_000  # index offset of each rotated copy in MMBench files
LETTERS = "ABCDEFGHI"


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "NaN", "None")


def read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a TSV that may hold very long (base64 image) fields."""
    require_file(path, "an MMBench TSV (index, question, hint, A..D, answer, category, image ...)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        header = list(reader.fieldnames or [])
    missing = {"index", "question", "A", "B", "image"} - set(header)
    if missing:
        raise BenchmarkDataError(f"{path} lacks the MMBench columns {sorted(missing)}")
    return header, rows


def _decode_image(rows_by_index: Mapping[int, dict[str, str]], row: dict[str, str]) -> bytes:
    data = row["image"].strip()
    if len(data) <= 64 and data.isdigit():  # a reference to the row that holds the image
        data = rows_by_index[int(data)]["image"].strip()
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError) as err:
        raise BenchmarkDataError(f"row {row['index']}: image is not base64 ({err})") from err


def rotate(row: dict[str, str], letters: Sequence[str], k: int) -> dict[str, str]:
    """A copy of ``row`` with its options shifted by ``k`` (the answer letter follows its option)."""
    texts = [row[c] for c in letters]
    out = dict(row)
    for i, letter in enumerate(letters):
        out[letter] = texts[(i + k) % len(texts)]
    if _present(row.get("answer")) and row["answer"].strip() in letters:
        old = letters.index(row["answer"].strip())
        out["answer"] = letters[(old - k) % len(letters)]
    out["index"] = str(int(row["index"]) + k * ROUND)
    return out


@dataclass
class MMBench(Benchmark):
    """MMBench (see the module docstring for the file and the circular evaluation)."""

    name = "mmbench"
    test_splits = ("test",)

    split: str = "dev"
    tsv_file: str | None = None
    circular: str = "auto"
    suffix: str = MULTIPLE_CHOICE

    def load(self) -> list[Question]:
        header, rows = read_tsv(self.path(self.tsv_file, f"mmbench_{self.split}_20230712.tsv"))
        self._header = [c for c in header if c != "image"]
        by_index = {int(r["index"]): r for r in rows}
        has_copies = any(i >= ROUND for i in by_index)
        make_copies = str(self.circular).lower() in ("true", "auto") and not has_copies
        if str(self.circular).lower() == "false":
            rows = [r for r in rows if int(r["index"]) < ROUND]
        out = []
        for row in rows:
            image = _decode_image(by_index, row)
            letters = [c for c in LETTERS if c in row and _present(row[c])]
            rounds = range(len(letters)) if make_copies else range(1)
            for k in rounds:
                out.append(self._question(rotate(row, letters, k) if k else row, letters, image))
        return out

    def _question(self, row: dict[str, str], letters: list[str], image: bytes) -> Question:
        options = [(c, row[c]) for c in letters]
        hint = row.get("hint") if _present(row.get("hint")) else None
        prompt = choice_prompt(row["question"], options, hint, self.suffix)
        meta = {
            "options": dict(options),
            "answer": row["answer"].strip() if _present(row.get("answer")) else None,
            "category": row.get("category"),
            "row": {c: row.get(c, "") for c in self._header},
        }
        index = int(row["index"])
        return Question(str(index), prompt, image, meta, group=str(index % ROUND))

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        asked = [q for q in questions if q.qid in answers]
        if not asked or any(q.meta["answer"] is None for q in asked):
            return Scores(counts={"rows": len(asked)}, notes=["no answers in this TSV: upload the submission .xlsx"])
        rounds: dict[str, list[bool]] = defaultdict(list)
        category: dict[str, str] = {}
        first, unparsed = [], 0
        for q in asked:
            letter = parse_option_letter(answers[q.qid], q.meta["options"])
            unparsed += letter is None
            right = letter == q.meta["answer"]
            rounds[q.group].append(right)
            category[q.group] = q.meta.get("category") or "unknown"
            if int(q.qid) < ROUND:
                first.append(float(right))
        metrics = {"accuracy": percent(circular_accuracy(rounds)), "single_pass_accuracy": percent(mean(first))}
        for cat in sorted(set(category.values())):
            groups = {g: r for g, r in rounds.items() if category[g] == cat}
            metrics[f"category/{cat.lower().replace(' ', '_')}"] = percent(circular_accuracy(groups))
        return Scores(metrics, {"questions": len(rounds), "rows": len(asked), "unparsed": unparsed})

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path:
        columns = list(questions[0].meta["row"]) if questions else ["index"]
        header = [*columns, "prediction"]
        rows = [[*q.meta["row"].values(), answers.get(q.qid, "")] for q in questions]
        tsv = out_dir / f"mmbench_{self.split}_submission.tsv"
        out_dir.mkdir(parents=True, exist_ok=True)
        with tsv.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(rows)
        return write_xlsx(out_dir / f"mmbench_{self.split}_submission.xlsx", header, rows)
