"""What every benchmark is made of: questions, scores, and the ``Benchmark`` base class.

A benchmark is a dataclass whose fields are its options (the ``benchmark:`` node of ``conf/benchmark/<name>.yaml``
minus ``name``) plus ``root``, the folder that holds its public release files (``data.root``). It loads its
questions (id, image, prompt, and the metadata its scorer needs), scores answers keyed by question id, and may
write the submission file of an evaluation server.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from eve_lightning.eval.prompts import SHORT_ANSWER

ImageSource = Path | bytes | None


class BenchmarkDataError(FileNotFoundError):
    """A benchmark's files are missing or malformed; the message names the file and what was expected."""


@dataclass(frozen=True)
class Question:
    """One model call of a benchmark.

    Attributes:
        qid: unique id within the benchmark run (the resume key); a string.
        prompt: the user turn, instruction included (the image goes before it).
        image: image file, encoded image bytes (MMBench ships base64 images inside its TSV), or None.
        meta: whatever the scorer needs (answers, labels, options, categories ...); JSON-serializable.
        group: questions that are scored together (MME image pairs, MMBench rotations); ``--limit`` never
            splits a group. None = the question is its own group.
    """

    qid: str
    prompt: str
    image: ImageSource = None
    meta: dict[str, Any] = field(default_factory=dict)
    group: str | None = None


@dataclass
class Scores:
    """What a scorer returns.

    Attributes:
        metrics: name -> value (accuracies in percent, as the papers report them). Empty for splits without
            answers (test servers).
        counts: name -> count (questions scored, unparsed answers, ...).
        notes: sentences for the results file (e.g. "upload the submission to ...").
    """

    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def open_question_image(source: ImageSource) -> Image.Image | None:
    """Open and decode a question's image (None for text-only questions)."""
    if source is None:
        return None
    img = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else Image.open(source)
    img.load()
    return img


@dataclass
class Benchmark:
    """Base class of benchmarks (subclasses are dataclasses with their options as fields).

    Attributes:
        root: folder of the benchmark's files (``data.root``).
        split: which part of the benchmark (names follow each release).
        suffix: instruction appended to every question on its own line (the paper's protocol).
    """

    name: ClassVar[str] = ""
    test_splits: ClassVar[tuple[str, ...]] = ()  # splits without public answers: submission file only

    root: str
    split: str = ""
    suffix: str = SHORT_ANSWER

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "root"]

    @property
    def has_answers(self) -> bool:
        """Whether this split can be scored locally."""
        return self.split not in self.test_splits

    def path(self, name: str | None, default: str) -> Path:
        """``root / (name or default)``; absolute names are kept."""
        return Path(self.root) / (name or default)

    def with_suffix(self, text: str) -> str:
        """The question followed by the instruction line (when there is one)."""
        text = text.strip()
        return f"{text}\n{self.suffix}" if self.suffix else text

    def load(self) -> list[Question]:
        """Read the benchmark's files and return its questions in file order.

        Raises:
            BenchmarkDataError: a file is missing or does not look like the release format.
        """
        raise NotImplementedError

    def score(self, questions: Sequence[Question], answers: Mapping[str, str]) -> Scores:
        """Score the answers (question id -> text) of ``questions``; questions without an answer are skipped."""
        raise NotImplementedError

    def write_submission(self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path) -> Path | None:
        """Write the evaluation server's file when this benchmark has one (default: none)."""
        return None


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise a ``BenchmarkDataError`` that says what the file should be."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path} not found: expected {what} (see docs/evaluation.md)")
    return path


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file that must exist."""
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path} is not valid JSON ({err}): expected {what}") from err


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """Load a JSON-lines file (one object per line; also accepts a single JSON list)."""
    require_file(path, what)
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path} is not JSON lines ({err}): expected {what}") from err


def find_image(folder: Path, name: str, extensions: Sequence[str] = ("", ".jpg", ".png", ".jpeg")) -> Path:
    """The image ``folder / name``, trying common extensions when ``name`` has none (existence is not required)."""
    base = folder / name
    for ext in extensions:
        candidate = base.with_name(base.name + ext) if ext else base
        if candidate.is_file():
            return candidate
    return base


def percent(value: float) -> float:
    """A fraction as a percentage rounded to 4 decimals (the results file stays readable)."""
    return round(100.0 * value, 4)


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (atomically: a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path
