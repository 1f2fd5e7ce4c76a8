"""POPE and MME from tiny files in their release formats; scores computed by hand."""

from __future__ import annotations

import json

import pytest

from eve_lightning.eval.registry import build_benchmark
from tests.helpers.eval_testkit import write_image


def write_pope(root, category, rows):
    lines = [
        json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": text, "label": label})
        for i, (text, label) in enumerate(rows)
    ]
    (root / f"coco_pope_{category}.json").write_text("\n".join(lines) + "\n")


def test_pope_metrics_per_setting_and_mean_f1(tmp_path):
    write_pope(tmp_path, "random", [("Is there a dog?", "yes"), ("Is there a cat?", "no")] * 2)
    write_pope(tmp_path, "popular", [("Is there a car?", "yes"), ("Is there a bus?", "no")])
    write_pope(tmp_path, "adversarial", [("Is there a fork?", "yes"), ("Is there a knife?", "yes")])
    bench = build_benchmark("pope", tmp_path)
    questions = bench.load()
    assert len(questions) == 8 and questions[0].qid == "adversarial/1"
    assert questions[0].prompt == "Is there a fork?\nAnswer the question using a single word or phrase."
    assert questions[0].image == tmp_path / "val2014" / "COCO_val2014_000000000000.jpg"
    answers = {
        # random: labels yes, no, yes, no; parsed yes, no, no, yes -> TP 1, TN 1, FN 1, FP 1
        "random/1": "Yes",
        "random/2": "No",
        "random/3": "There is no dog.",
        "random/4": "yes",
        # popular: all right
        "popular/1": "yes",
        "popular/2": "no",
        # adversarial: labels yes, yes; "" is unparsed (a miss), "Yes." -> TP 1, FN 1
        "adversarial/1": "",
        "adversarial/2": "Yes.",
    }
    scores = bench.score(questions, answers)
    m = scores.metrics
    assert (m["random/accuracy"], m["random/precision"], m["random/recall"], m["random/f1"]) == (50.0, 50.0, 50.0, 50.0)
    assert m["random/yes_ratio"] == 50.0
    assert (m["popular/accuracy"], m["popular/f1"], m["popular/yes_ratio"]) == (100.0, 100.0, 50.0)
    assert (m["adversarial/precision"], m["adversarial/recall"]) == (100.0, 50.0)
    assert m["adversarial/f1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert m["f1"] == pytest.approx(100 * (0.5 + 1.0 + 2 / 3) / 3, abs=1e-3)
    assert m["accuracy"] == pytest.approx(100 * (0.5 + 1.0 + 0.5) / 3, abs=1e-3)
    assert scores.counts["unparsed"] == 1 and scores.counts["questions"] == 8

    one = build_benchmark("pope", tmp_path, {"split": "popular"})
    assert [q.qid for q in one.load()] == ["popular/1", "popular/2"]


def write_mme(root):
    q = "Please answer yes or no."
    existence = root / "existence"
    write_image(existence / "img1.jpg")
    (existence / "img1.txt").write_text(f"Is there a dog? {q}\tYes\nIs there a cat? {q}\tNo\n")
    write_image(existence / "img2.png")
    (existence / "img2.txt").write_text(f"Is there a car? {q}\tYes\nIs there a bus? {q}\tNo\n")
    artwork = root / "artwork"
    write_image(artwork / "images" / "a1.jpg")
    (artwork / "questions_answers_YN").mkdir(parents=True)
    (artwork / "questions_answers_YN" / "a1.txt").write_text(f"Is it by Monet? {q}\tYes\nIs it by Dali? {q}\tNo\n")


def test_mme_acc_plus_acc_plus_summed_over_perception_subtasks(tmp_path):
    write_mme(tmp_path)
    bench = build_benchmark("mme", tmp_path, {"subtasks": ["existence", "artwork"]})
    questions = bench.load()
    assert [q.qid for q in questions] == [
        "existence/img1/0",
        "existence/img1/1",
        "existence/img2/0",
        "existence/img2/1",
        "artwork/a1/0",
        "artwork/a1/1",
    ]
    assert questions[2].image == tmp_path / "existence" / "img2.png"
    assert questions[4].image == tmp_path / "artwork" / "images" / "a1.jpg"
    assert questions[0].prompt.endswith("Please answer yes or no.\nAnswer the question using a single word or phrase.")
    answers = {
        "existence/img1/0": "Yes",
        "existence/img1/1": "No",  # image 1: both right
        "existence/img2/0": "No",  # wrong
        "existence/img2/1": "no.",  # right
        "artwork/a1/0": "There is.",  # the first word is not yes/no: wrong
        "artwork/a1/1": "No",
    }
    scores = bench.score(questions, answers)
    m = scores.metrics
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125; artwork: acc 1/2 = 50, acc+ 0 -> 50
    assert (m["existence/acc"], m["existence/acc_plus"], m["existence/score"]) == (75.0, 50.0, 125.0)
    assert (m["artwork/acc"], m["artwork/acc_plus"], m["artwork/score"]) == (50.0, 0.0, 50.0)
    assert m["perception"] == 175.0 and "cognition" not in m
    assert scores.counts == {"questions": 6, "unparsed": 1, "images": 3}


def test_mme_needs_every_subtask_of_the_split(tmp_path):
    write_mme(tmp_path)
    with pytest.raises(FileNotFoundError, match="count not found"):
        build_benchmark("mme", tmp_path).load()
