"""Running questions through a model: batches, an append-only answers file, resume, worker processes.

Answers go to ``<output_dir>/answers.jsonl`` (worker processes: ``answers.part<rank>.jsonl``), one JSON object per
line (``question_id``, ``answer``, ``prompt``), flushed and synced after every batch. A rerun reads every answers
file of the folder and asks only the questions without an answer, so an interrupted run loses at most the batch
in flight. A line cut short by the interruption is ignored (and its question asked again).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eve_lightning.eval.base import Question
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)

ANSWERS_FILE = "answers.jsonl"
AnswerFn = Callable[[Sequence[Question]], list[str]]


def answer_files(out_dir: Path) -> list[Path]:
    """Every answers file of an output folder (the main one and the workers')."""
    files = sorted(Path(out_dir).glob("answers.part*.jsonl"))
    main = Path(out_dir) / ANSWERS_FILE
    return [main, *files] if main.is_file() else files


def read_answers(out_dir: Path) -> dict[str, str]:
    """Question id -> answer from every answers file of ``out_dir`` (broken lines are skipped)."""
    answers: dict[str, str] = {}
    broken = 0
    for path in answer_files(out_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                answers[str(record["question_id"])] = str(record["answer"])
            except (json.JSONDecodeError, KeyError, TypeError):
                broken += 1
    if broken:
        log.warning("%s: %d unreadable answer line(s) (an interrupted write) skipped; asked again", out_dir, broken)
    return answers


class AnswerLog:
    """Append-only JSONL answers file, synced to disk after every batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self._file = path.open("a", encoding="utf-8")
        if needs_newline:  # the previous run died mid-line: start on a fresh one
            self._file.write("\n")

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_questions(
    questions: Sequence[Question],
    answer_fn: AnswerFn,
    out_dir: Path,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "eval",
    answers_file: str = ANSWERS_FILE,
    on_batch: Callable[[int], Any] | None = None,
) -> dict[str, str]:
    """Answer every question of ``questions`` that ``out_dir`` has no answer for yet.

    Args:
        questions: the questions, in asking order.
        answer_fn: answers a batch (a ``BatchAnswerer``, or any callable of the same shape).
        out_dir: folder of the answers files.
        batch_size: questions per ``answer_fn`` call.
        progress: show a tqdm bar (on stderr).
        desc: the bar's label.
        answers_file: file name to append to (workers use their own).
        on_batch: called with the batch size after each batch is written.

    Returns:
        Question id -> answer for every question of ``questions``.
    """
    out_dir = Path(out_dir)
    done = read_answers(out_dir)
    todo = [q for q in questions if q.qid not in done]
    initial = len(questions) - len(todo)
    if initial:
        log.info("resuming: %d of %d questions already answered in %s", initial, len(questions), out_dir)
    with (
        AnswerLog(out_dir / answers_file) as answer_log,
        tqdm(total=len(questions), initial=initial, desc=desc, unit="q", disable=not progress) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            texts = answer_fn(batch)
            if len(texts) != len(batch):
                raise RuntimeError(f"answer function returned {len(texts)} answers for {len(batch)} questions")
            answer_log.write([{"question_id": q.qid, "answer": t, "prompt": q.prompt} for q, t in zip(batch, texts)])
            done.update((q.qid, t) for q, t in zip(batch, texts))
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
    return {q.qid: done[q.qid] for q in questions if q.qid in done}


def _worker(
    rank: int,
    factory: Callable[[str], AnswerFn],
    device: str,
    questions: Sequence[Question],
    out_dir: str,
    batch_size: int,
    progress_queue: Any,
) -> None:
    answer_fn = factory(device)
    run_questions(
        questions,
        answer_fn,
        Path(out_dir),
        batch_size,
        progress=False,
        answers_file=f"answers.part{rank}.jsonl",
        on_batch=progress_queue.put,
    )


def run_parallel(
    questions: Sequence[Question],
    factory: Callable[[str], AnswerFn],
    devices: Sequence[str],
    out_dir: Path,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, str]:
    """Answer the questions with one worker process per device (e.g. ``cuda:0``, ``cuda:1``).

    The unanswered questions are dealt round-robin to the workers; each loads its own model with
    ``factory(device)`` (a picklable callable, e.g. a ``functools.partial`` of ``generation.load_answerer``) and
    appends to its own answers file. One progress bar counts all workers.

    Raises:
        RuntimeError: a worker failed (the answers written so far are kept; a rerun resumes).
    """
    out_dir = Path(out_dir)
    done = read_answers(out_dir)
    todo = [q for q in questions if q.qid not in done]
    if todo:
        ctx = multiprocessing.get_context("spawn")
        progress_queue = ctx.Queue()
        workers = [
            ctx.Process(
                target=_worker,
                args=(rank, factory, device, todo[rank :: len(devices)], str(out_dir), batch_size, progress_queue),
                daemon=True,
            )
            for rank, device in enumerate(devices)
        ]
        for w in workers:
            w.start()
        initial = len(questions) - len(todo)
        with tqdm(total=len(questions), initial=initial, desc=desc, unit="q", disable=not progress) as bar:
            while any(w.is_alive() for w in workers) or not progress_queue.empty():
                try:
                    bar.update(progress_queue.get(timeout=0.5))
                except queue.Empty:
                    continue
        for w in workers:
            w.join()
        failed = [f"{devices[i]} (exit code {w.exitcode})" for i, w in enumerate(workers) if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"evaluation worker(s) failed on {', '.join(failed)}; answers so far are kept, rerun")
    answers = read_answers(out_dir)
    return {q.qid: answers[q.qid] for q in questions if q.qid in answers}
