"""ScienceQA, MMBench (circular), SEED-Bench and MM-Vet from tiny files in their release formats."""

from __future__ import annotations

import base64
import csv
import json
import zipfile
from xml.etree import ElementTree

import pytest

from eve_lightning.eval.registry import build_benchmark
from tests.helpers.eval_testkit import png_bytes, write_image

MC = "Answer with the option's letter from the given choices directly."


def test_scienceqa_img_accuracy_and_prompt(tmp_path):
    problems = {
        "1": {"question": "Which is a mammal?", "choices": ["frog", "dog", "snake"], "answer": 1, "hint": "",
              "image": "image.png", "split": "test"},
        "2": {"question": "What is the capital?", "choices": ["Paris", "Rome"], "answer": 0,
              "hint": "Look at the map.", "image": "image.png", "split": "test"},
        "3": {"question": "Is ice cold?", "choices": ["yes", "no"], "answer": 0, "hint": "", "image": None,
              "split": "test"},
        "4": {"question": "Train only", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "split": "train"},
    }  # fmt: skip
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["4"], "val": [], "test": ["1", "2", "3"]}))
    bench = build_benchmark("scienceqa", tmp_path)
    questions = bench.load()
    assert [q.qid for q in questions] == ["1", "2"]  # image questions of the test split
    assert questions[0].image == tmp_path / "test" / "1" / "image.png"
    assert questions[1].prompt == f"Context: Look at the map.\nWhat is the capital?\nA. Paris\nB. Rome\n{MC}"
    assert questions[0].prompt == f"Which is a mammal?\nA. frog\nB. dog\nC. snake\n{MC}"
    scores = bench.score(questions, {"1": "B", "2": "B"})
    assert scores.metrics == {"accuracy": 50.0}

    every = build_benchmark("scienceqa", tmp_path, {"image_only": False})
    questions = every.load()
    assert questions[2].image is None
    scores = every.score(questions, {"1": "B", "2": "B", "3": "A."})
    assert scores.metrics["accuracy"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert scores.metrics["accuracy_img"] == 50.0


def write_tsv(path, rows):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.get(c, "") for c in header])


def b64_png(colour):
    return base64.b64encode(png_bytes(colour)).decode()


def test_mmbench_circular_evaluation_with_rotations_made_here(tmp_path):
    rows = [
        {"index": 0, "question": "What animal is shown?", "hint": "nan", "A": "cat", "B": "dog", "C": "bird",
         "D": "nan", "answer": "B", "category": "animals", "image": b64_png((10, 20, 30)), "split": "dev"},
        {"index": 1, "question": "What colour?", "hint": "A photo.", "A": "red", "B": "blue", "C": "", "D": "",
         "answer": "A", "category": "colour", "image": "0", "split": "dev"},  # image shared with row 0
    ]  # fmt: skip
    write_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows)
    bench = build_benchmark("mmbench", tmp_path)
    questions = bench.load()
    assert [q.qid for q in questions] == ["0", "1000000", "2000000", "1", "1000001"]
    assert [q.group for q in questions] == ["0", "0", "0", "1", "1"]
    assert questions[3].image == png_bytes((10, 20, 30))  # the referenced row's image
    assert questions[3].prompt == f"A photo.\nWhat colour?\nA. red\nB. blue\n{MC}"
    # rotation 1 of row 0: A dog, B bird, C cat -> the right letter moves from B to A
    assert questions[1].prompt == f"What animal is shown?\nA. dog\nB. bird\nC. cat\n{MC}"
    assert [q.meta["answer"] for q in questions] == ["B", "A", "C", "A", "B"]
    # "dog" (the option's text) is right in every rotation; "A" is right only in the first rotation of row 1
    answers = {"0": "dog", "1000000": "dog", "2000000": "dog", "1": "A", "1000001": "A"}
    scores = bench.score(questions, answers)
    assert scores.metrics["accuracy"] == 50.0  # circular: question 0 right, question 1 wrong
    assert scores.metrics["single_pass_accuracy"] == 100.0  # both right in their first pass
    assert (scores.metrics["category/animals"], scores.metrics["category/colour"]) == (100.0, 0.0)
    assert scores.counts == {"questions": 2, "rows": 5, "unparsed": 0}

    xlsx = bench.write_submission(questions, answers, tmp_path / "out")
    with zipfile.ZipFile(xlsx) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
        assert "xl/workbook.xml" in z.namelist()
    cells = [t.text for t in ElementTree.fromstring(sheet).iter() if t.tag.endswith("}t")]  # well-formed XML
    assert cells[:4] == ["index", "question", "hint", "A"] and "prediction" in cells and "image" not in cells
    assert "1000001" in cells and "dog" in cells
    tsv_rows = list(csv.reader((tmp_path / "out" / "mmbench_dev_submission.tsv").open(), delimiter="\t"))
    assert tsv_rows[0][-1] == "prediction" and "image" not in tsv_rows[0]
    assert tsv_rows[2][:4] == ["1000000", "What animal is shown?", "nan", "dog"] and tsv_rows[2][-1] == "dog"


def test_mmbench_uses_the_rotated_copies_of_a_release_tsv(tmp_path):
    rows = [
        {"index": 5, "question": "Which?", "A": "cat", "B": "dog", "answer": "B", "category": "c",
         "image": b64_png((1, 2, 3))},
        {"index": 1000005, "question": "Which?", "A": "dog", "B": "cat", "answer": "A", "category": "c",
         "image": "5"},
    ]  # fmt: skip
    write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    bench = build_benchmark("mmbench", tmp_path, {"tsv_file": "MMBench_DEV_EN.tsv"})
    questions = bench.load()
    assert [q.qid for q in questions] == ["5", "1000005"] and {q.group for q in questions} == {"5"}
    assert bench.score(questions, {"5": "B", "1000005": "A"}).metrics["accuracy"] == 100.0
    assert bench.score(questions, {"5": "B", "1000005": "B"}).metrics["accuracy"] == 0.0
    single = build_benchmark("mmbench", tmp_path, {"tsv_file": "MMBench_DEV_EN.tsv", "circular": False})
    assert [q.qid for q in single.load()] == ["5"]


def test_mmbench_test_split_has_no_answers_to_score(tmp_path):
    rows = [{"index": 0, "question": "Which?", "A": "x", "B": "y", "image": b64_png((0, 0, 0))}]
    write_tsv(tmp_path / "mmbench_test_20230712.tsv", rows)
    bench = build_benchmark("mmbench", tmp_path, {"split": "test"})
    questions = bench.load()
    scores = bench.score(questions, {q.qid: "A" for q in questions})
    assert scores.metrics == {} and "submission" in scores.notes[0]


def test_seed_bench_image_questions_by_type(tmp_path):
    qs = [
        {"question_id": "101", "question": "What is in the sky?", "choice_a": "sun", "choice_b": "moon",
         "choice_c": "bird", "choice_d": "plane", "answer": "A", "data_id": "img_1.jpg", "data_type": "image",
         "question_type_id": 1},
        {"question_id": "102", "question": "Which object?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "C", "data_id": "img_2", "data_type": "image", "question_type_id": 2},
        {"question_id": "103", "question": "Video?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_id": "v.mp4", "data_type": "video", "question_type_id": 10},
    ]  # fmt: skip
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10}
    (tmp_path / "SEED-Bench.json").write_text(json.dumps({"question_type": types, "questions": qs}))
    write_image(tmp_path / "SEED-Bench-image" / "img_2.jpg")
    bench = build_benchmark("seed", tmp_path)
    questions = bench.load()
    assert [q.qid for q in questions] == ["101", "102"]  # the video question is skipped
    assert questions[1].image == tmp_path / "SEED-Bench-image" / "img_2.jpg"  # extension found
    assert questions[0].prompt == f"What is in the sky?\nA. sun\nB. moon\nC. bird\nD. plane\n{MC}"
    scores = bench.score(questions, {"101": "A", "102": "B"})
    assert scores.metrics == {"accuracy": 50.0, "type/instance_identity": 0.0, "type/scene_understanding": 100.0}


def test_mmvet_writes_the_grader_input_and_says_it_needs_gpt4(tmp_path):
    data = {
        "v1_0": {"imagename": "v1_0.png", "question": "What is written here?", "answer": "x", "capability": ["ocr"]},
        "v1_1": {"imagename": "v1_1.jpg", "question": "Explain the joke.", "answer": "y", "capability": ["rec"]},
    }
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    bench = build_benchmark("mmvet", tmp_path)
    questions = bench.load()
    assert questions[0].prompt == "What is written here?"  # no instruction line
    assert questions[1].image == tmp_path / "images" / "v1_1.jpg"
    answers = {"v1_0": "Hello", "v1_1": "It is a pun."}
    scores = bench.score(questions, answers)
    assert scores.metrics == {} and "GPT-4" in scores.notes[0]
    path = bench.write_submission(questions, answers, tmp_path / "out")
    assert json.loads(path.read_text()) == answers
