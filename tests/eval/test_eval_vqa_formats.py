"""VQAv2, VizWiz, TextVQA and GQA from tiny files in their release formats; scores computed by hand."""

from __future__ import annotations

import json

import pytest

from eve_lightning.eval.base import BenchmarkDataError
from eve_lightning.eval.registry import build_benchmark

SHORT = "Answer the question using a single word or phrase."


def humans(*pairs):
    """[(answer, count), ...] -> the 10 VQA answer objects."""
    out = [a for a, n in pairs for _ in range(n)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def vqav2_root(tmp_path):
    qs = [
        {"image_id": 42, "question": "Is it sunny?", "question_id": 420},
        {"image_id": 42, "question": "How many dogs?", "question_id": 421},
        {"image_id": 7, "question": "What colour is the car?", "question_id": 70},
    ]
    anns = [
        {"question_id": 420, "image_id": 42, "answer_type": "yes/no", "answers": humans(("yes", 10))},
        {"question_id": 421, "image_id": 42, "answer_type": "number", "answers": humans(("2", 2), ("3", 8))},
        {"question_id": 70, "image_id": 7, "answer_type": "other", "answers": humans(("red", 1), ("blue", 9))},
    ]
    write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": qs})
    write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": anns})
    write_json(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {"questions": qs[:2]})
    write_json(tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json", {"questions": qs})
    return tmp_path


def test_vqav2_val_accuracy_by_hand(vqav2_root):
    bench = build_benchmark("vqav2", vqav2_root)
    questions = bench.load()
    assert [q.qid for q in questions] == ["420", "421", "70"]
    assert questions[0].prompt == f"Is it sunny?\n{SHORT}"
    assert questions[0].image == vqav2_root / "val2014" / "COCO_val2014_000000000042.jpg"
    # "Yes." -> yes (10 of 10): 1.0; "two" -> 2 (2 of 10): 0.6; "The red" -> red (1 of 10): 0.3
    scores = bench.score(questions, {"420": "Yes.", "421": "two", "70": "The red"})
    assert scores.metrics["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 0.3) / 3, abs=1e-3)
    assert scores.metrics["accuracy_yes_no"] == pytest.approx(100.0)
    assert scores.metrics["accuracy_number"] == pytest.approx(60.0)
    assert scores.metrics["accuracy_other"] == pytest.approx(30.0)
    assert scores.counts == {"questions": 3}


def test_vqav2_test_dev_writes_a_submission_for_every_test_question(vqav2_root, tmp_path):
    bench = build_benchmark("vqav2", vqav2_root, {"split": "test-dev2015"})
    bench.all_questions_file = "v2_OpenEnded_mscoco_test2015_questions.json"
    questions = bench.load()
    assert questions[0].image == vqav2_root / "test2015" / "COCO_test2015_000000000042.jpg"
    assert "answers" not in questions[0].meta
    scores = bench.score(questions, {"420": "Yes.", "421": "Two"})
    assert scores.metrics == {} and scores.notes
    path = bench.write_submission(questions, {"420": "Yes.", "421": "Two"}, tmp_path / "out")
    rows = json.loads(path.read_text())
    assert rows == [
        {"question_id": 420, "answer": "yes"},
        {"question_id": 421, "answer": "2"},
        {"question_id": 70, "answer": ""},  # in test2015 but not asked: empty answer
    ]


def test_vizwiz_val_and_test(tmp_path):
    val = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What is this?",
            "answers": humans(("unanswerable", 7), ("soup can", 3)),
            "answer_type": "unanswerable",
            "answerable": 0,
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "What colour is this shirt?",
            "answers": humans(("white", 2), ("grey", 8)),
            "answer_type": "other",
            "answerable": 1,
        },
    ]
    write_json(tmp_path / "Annotations" / "val.json", val)
    write_json(tmp_path / "Annotations" / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What?"}])
    bench = build_benchmark("vizwiz", tmp_path)
    questions = bench.load()
    assert questions[0].qid == "VizWiz_val_00000000.jpg"
    assert questions[0].image == tmp_path / "val" / "VizWiz_val_00000000.jpg"
    assert questions[0].prompt.splitlines() == [
        "What is this?",
        "When the provided information is insufficient, respond with 'Unanswerable'.",
        SHORT,
    ]
    scores = bench.score(questions, {questions[0].qid: "Unanswerable", questions[1].qid: "White."})
    assert scores.metrics == {"accuracy": 80.0, "accuracy_other": 60.0, "accuracy_unanswerable": 100.0}

    test = build_benchmark("vizwiz", tmp_path, {"split": "test"})
    tq = test.load()
    path = test.write_submission(tq, {"VizWiz_test_00000000.jpg": "A Can."}, tmp_path / "out")
    assert json.loads(path.read_text()) == [{"image": "VizWiz_test_00000000.jpg", "answer": "can"}]


def test_textvqa_with_ocr_tokens(tmp_path):
    data = [
        {"question_id": 1, "image_id": "abc", "question": "What brand?", "answers": ["Nikon", "nikon."] + ["x"] * 8},
        {"question_id": 2, "image_id": "def", "question": "What does the sign say?", "answers": ["stop"] * 10},
    ]
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})
    ocr = [{"image_id": "abc", "ocr_tokens": ["NIKON", "D90"]}, {"image_id": "def", "ocr_tokens": []}]
    write_json(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": ocr})
    bench = build_benchmark("textvqa", tmp_path, {"ocr_tokens": True})
    questions = bench.load()
    assert questions[0].prompt == f"What brand?\nReference OCR token: NIKON, D90\n{SHORT}"
    assert questions[0].image == tmp_path / "train_images" / "abc.jpg"
    # "NIKON" matches "Nikon" and "nikon." after normalization: 2 of 10 -> 0.6; "go" -> 0
    scores = bench.score(questions, {"1": "NIKON", "2": "go"})
    assert scores.metrics == {"accuracy": 30.0}
    plain = build_benchmark("textvqa", tmp_path).load()
    assert plain[0].prompt == f"What brand?\n{SHORT}"


def test_gqa_exact_match_by_type(tmp_path):
    data = {
        "201": {"imageId": "n1", "question": "Is the cup red?", "answer": "yes", "types": {"structural": "verify"}},
        "202": {"imageId": "n2", "question": "On the table?", "answer": "cup", "types": {"structural": "query"}},
        "203": {"imageId": "n2", "question": "Left or right?", "answer": "left", "types": {"structural": "choose"}},
    }
    write_json(tmp_path / "testdev_balanced_questions.json", data)
    bench = build_benchmark("gqa", tmp_path)
    questions = bench.load()
    assert questions[1].image == tmp_path / "images" / "n2.jpg"
    answers = {"201": "Yes.", "202": "a cup", "203": "Left"}  # exact match keeps articles: "a cup" is wrong
    scores = bench.score(questions, answers)
    assert scores.metrics["accuracy"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert (scores.metrics["accuracy_verify"], scores.metrics["accuracy_query"]) == (100.0, 0.0)
    rows = json.loads(bench.write_submission(questions, answers, tmp_path / "out").read_text())
    assert rows[0] == {"questionId": "201", "prediction": "yes"}


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"v2_OpenEnded_mscoco_val2014_questions\.json not found"):
        build_benchmark("vqav2", tmp_path).load()
