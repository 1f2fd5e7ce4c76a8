"""Runner: batches, the answers file, resuming without re-answering, worker processes, run keys, limits."""

from __future__ import annotations

import json

import pytest

from eve_lightning.eval.base import Question
from eve_lightning.eval.cli import apply_limit, check_run_key
from eve_lightning.eval.runner import read_answers, run_parallel, run_questions
from eve_lightning.utils.config_checks import ConfigError
from tests.helpers.eval_testkit import CountingAnswerer, counting_factory


def make_questions(n: int) -> list[Question]:
    return [Question(f"q{i}", f"question {i}?") for i in range(n)]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_interrupted_run_resumes_without_re_answering(tmp_path):
    questions = make_questions(10)
    first = CountingAnswerer(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_questions(questions, first, tmp_path, batch_size=3, progress=False)
    assert first.calls == 2
    assert len(lines(tmp_path / "answers.jsonl")) == 6  # both finished batches are on disk

    second = CountingAnswerer()
    answers = run_questions(questions, second, tmp_path, batch_size=3, progress=False)
    assert second.calls == 2  # the 4 questions left: a batch of 3 and a batch of 1
    assert second.asked == ["q6", "q7", "q8", "q9"]
    assert answers == {q.qid: f"answer to {q.qid}" for q in questions}
    records = lines(tmp_path / "answers.jsonl")
    assert sorted(r["question_id"] for r in records) == sorted(q.qid for q in questions)  # each exactly once
    assert records[0] == {"question_id": "q0", "answer": "answer to q0", "prompt": "question 0?"}

    third = CountingAnswerer()
    run_questions(questions, third, tmp_path, batch_size=3, progress=False)
    assert third.calls == 0


def test_a_line_cut_by_a_crash_is_asked_again(tmp_path):
    questions = make_questions(3)
    good = json.dumps({"question_id": "q0", "answer": "a", "prompt": "p"})
    (tmp_path / "answers.jsonl").write_text(good + '\n{"question_id": "q1", "ans')
    assert read_answers(tmp_path) == {"q0": "a"}
    answerer = CountingAnswerer()
    answers = run_questions(questions, answerer, tmp_path, batch_size=8, progress=False)
    assert answerer.asked == ["q1", "q2"]
    assert answers["q0"] == "a" and answers["q1"] == "answer to q1"
    assert read_answers(tmp_path) == answers  # the new lines start on a fresh line


def test_worker_processes_share_the_questions_and_resume(tmp_path):
    questions = make_questions(7)
    answers = run_parallel(questions, counting_factory, ["cpu", "cpu"], tmp_path, batch_size=2, progress=False)
    assert answers == {q.qid: f"answer to {q.qid}" for q in questions}
    part0, part1 = lines(tmp_path / "answers.part0.jsonl"), lines(tmp_path / "answers.part1.jsonl")
    assert [r["question_id"] for r in part0] == ["q0", "q2", "q4", "q6"]
    assert [r["question_id"] for r in part1] == ["q1", "q3", "q5"]
    more = make_questions(9)  # two new questions: only they are asked, by one worker each
    run_parallel(more, counting_factory, ["cpu", "cpu"], tmp_path, batch_size=2, progress=False)
    assert len(lines(tmp_path / "answers.part0.jsonl")) == 5 and len(lines(tmp_path / "answers.part1.jsonl")) == 4
    single = CountingAnswerer()
    assert len(run_questions(more, single, tmp_path, progress=False)) == 9 and single.calls == 0


def test_limit_keeps_groups_whole():
    questions = [
        Question("a/0", "p", group="a"),
        Question("a/1", "p", group="a"),
        Question("b/0", "p", group="b"),
        Question("b/1", "p", group="b"),
        Question("c", "p"),
    ]
    assert [q.qid for q in apply_limit(questions, 3)] == ["a/0", "a/1", "b/0", "b/1"]
    assert [q.qid for q in apply_limit(questions, 2)] == ["a/0", "a/1"]
    assert apply_limit(questions, None) == questions
    with pytest.raises(ConfigError):
        apply_limit(questions, 0)


def test_answers_of_another_run_are_not_mixed_in(tmp_path):
    key = {"model": "/m", "weights": "abc", "max_new_tokens": 8}
    check_run_key(tmp_path, key, overwrite=False)
    run_questions(make_questions(2), CountingAnswerer(), tmp_path, progress=False)
    check_run_key(tmp_path, key, overwrite=False)  # same run: fine
    with pytest.raises(ConfigError, match="different max_new_tokens, weights"):
        check_run_key(tmp_path, {**key, "weights": "new", "max_new_tokens": 9}, overwrite=False)
    check_run_key(tmp_path, {**key, "weights": "new"}, overwrite=True)
    assert read_answers(tmp_path) == {}
