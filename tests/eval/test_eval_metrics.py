"""Metric functions against values computed by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eve_lightning.eval.metrics import (
    binary_metrics,
    circular_accuracy,
    exact_match,
    mme_subtask_score,
    normalize_vqa_answer,
    option_letters,
    parse_option_letter,
    parse_yes_no,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("The dog", "dog"),  # articles dropped
        ("a man and an apple", "man and apple"),
        ("Yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a decimal point stays
        ("5.", "5"),
        ("1,000", "1000"),  # comma between digits deleted
        ("red, blue", "red blue"),  # punctuation touching a space is deleted
        ("black/white", "black white"),  # punctuation between words becomes a space
        ("t-shirt", "t shirt"),
        ("what?!", "what"),
        ("dont", "don't"),  # contractions get their apostrophe
        ("isnt it", "isn't it"),
        ("well", "well"),  # real words are not taken for contractions
        ("10:30", "10:30"),  # colons are kept
        ("  two\tdogs\n", "2 dogs"),
        ("(left)", "left"),
    ],
)
def test_vqa_normalization(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def test_vqa_accuracy_averages_min_matches_over_three_across_the_ten_leave_one_out_subsets():
    humans = ["2", "2"] + ["3"] * 8
    # Leaving out one of the 2 "2" annotators leaves 1 match (1/3); leaving out any of the other 8 leaves 2 (2/3).
    expected = (2 * (1 / 3) + 8 * (2 / 3)) / 10
    assert expected == pytest.approx(0.6)
    assert vqa_accuracy("two", humans) == pytest.approx(expected)
    assert vqa_accuracy("2", ["2"] + ["x"] * 9) == pytest.approx((1 * 0 + 9 * (1 / 3)) / 10)  # 0.3
    assert vqa_accuracy("2", ["2"] * 3 + ["x"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)  # 0.9
    assert vqa_accuracy("2", ["2"] * 4 + ["x"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("3", humans) == pytest.approx(1.0)
    assert vqa_accuracy("4", humans) == 0.0
    assert vqa_accuracy("A Dog.", ["dog"] * 10) == 1.0  # both sides normalized
    assert vqa_accuracy("anything", []) == 0.0
    assert vqa_accuracy("a", ["a", "b", "b"]) == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)  # any number of humans


def test_exact_match_ignores_case_trailing_period_and_spacing():
    assert exact_match(" Yes. ", "yes")
    assert exact_match("a  red circle.", "a red circle")
    assert not exact_match("a circle", "circle")


@pytest.mark.parametrize(
    ("answer", "strict", "parsed"),
    [
        ("Yes", False, "yes"),
        ("yes, there is a dog.", False, "yes"),
        ("No.", True, "no"),
        ("There is no dog in the image.", False, "no"),
        ("There is no dog in the image.", True, None),
        ("The dog is not there", False, "no"),
        ("There is a dog. No other animals.", False, "yes"),  # only the first sentence counts
        ("A dog.", False, "yes"),
        ("", False, None),
        ("maybe", True, None),
    ],
)
def test_parse_yes_no(answer, strict, parsed):
    assert parse_yes_no(answer, strict=strict) == parsed


def test_binary_metrics_by_hand():
    preds = ["yes", "yes", "no", "no", "yes", None]
    labels = ["yes", "no", "no", "yes", "yes", "yes"]
    # TP = 2 (0, 4), FP = 1 (1), TN = 1 (2), FN = 2 (3, and 5: unparsed never counts as yes)
    m = binary_metrics(preds, labels)
    precision, recall = 2 / 3, 2 / 4
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(precision)
    assert m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # 4/7
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert binary_metrics(["no", "no"], ["no", "no"]) == {
        "accuracy": 1.0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "yes_ratio": 0.0,
    }


def test_mme_subtask_score_is_acc_plus_acc_plus():
    s = mme_subtask_score({"a": [True, True], "b": [True, False], "c": [False, False]})
    assert s["acc"] == pytest.approx(100 * 3 / 6)
    assert s["acc_plus"] == pytest.approx(100 * 1 / 3)
    assert s["score"] == pytest.approx(50 + 100 / 3)


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("C) a dog", "C"),
        ("The answer is A.", "A"),
        ("Answer: (B)", "B"),
        ("The answer is a bird", None),  # an article, not option A
        ("dog", "C"),  # the text of an option
        ("Dog.", "C"),
        ("E", None),  # not an option
        ("I think it is a bird", None),
        ("", None),
    ],
)
def test_parse_option_letter(answer, parsed):
    assert parse_option_letter(answer, {"A": "cat", "B": "bird house", "C": "dog"}) == parsed


def test_option_letters_and_circular_accuracy():
    assert option_letters(4) == ["A", "B", "C", "D"]
    assert circular_accuracy({"q1": [True, True, True], "q2": [True, False], "q3": [True]}) == pytest.approx(2 / 3)


def test_metrics_module_needs_no_torch():
    code = "import sys, eve_lightning.eval.metrics, eve_lightning.eval.registry; assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
