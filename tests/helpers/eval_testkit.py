"""Helpers of the evaluation tests: tiny images and fake answer functions (picklable, for worker processes)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from eve_lightning.eval.base import Question


def png_bytes(colour=(200, 30, 30), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_image(path: Path, colour=(200, 30, 30), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(colour, size))
    return path


class CountingAnswerer:
    """Answers "answer to <qid>", counts calls and questions; can stop after a number of batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.asked: list[str] = []
        self.fail_after = fail_after

    def __call__(self, questions: Sequence[Question]) -> list[str]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        self.asked += [q.qid for q in questions]
        return [f"answer to {q.qid}" for q in questions]


def counting_factory(device: str) -> CountingAnswerer:
    """Worker-process factory of the runner tests."""
    return CountingAnswerer()


class TableAnswerer:
    """Answers from a fixed table keyed by question id (for scoring tests through the runner)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def __call__(self, questions: Sequence[Question]) -> list[str]:
        return [self.table[q.qid] for q in questions]
