"""The demo benchmark: held-out questions and the caption check, defined from the generator's own record."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from eve_lightning.data import synthetic_shapes as generator
from eve_lightning.eval.base import BenchmarkDataError
from eve_lightning.eval.benchmarks.demo import caption_check, drawn_objects, question_kind
from eve_lightning.eval.registry import UnknownBenchmarkError, benchmark_names, build_benchmark, get_benchmark_class
from tests.helpers.repo_paths import CONF


def test_demo_questions_are_every_held_out_human_turn_and_every_caption_image(demo_root):
    records = json.loads((demo_root / "raw" / "sft_val.json").read_text())
    captions = json.loads((demo_root / "raw" / "pretrain_val.json").read_text())
    bench = build_benchmark("demo", demo_root)
    questions = bench.load()
    asked = [q for q in questions if q.meta["kind"] != "caption_check"]
    assert len(asked) == sum(len(r["conversations"]) // 2 for r in records)
    assert len(questions) - len(asked) == len(captions)
    assert len({q.qid for q in questions}) == len(questions)
    for q in asked:
        assert "<image>" not in q.prompt and q.prompt == q.prompt.strip()
        assert q.meta["kind"] != "other"
        assert (q.image is None) == (q.meta["kind"] == "text")
        assert q.image is None or q.image.is_file()
    checks = [q for q in questions if q.meta["kind"] == "caption_check"]
    assert all(q.prompt == "Describe the image." and q.image.is_file() for q in checks)


def test_demo_scores_the_recorded_answers_perfectly(demo_root):
    bench = build_benchmark("demo", demo_root)
    questions = bench.load()
    answers = {q.qid: q.meta.get("answer") or q.meta["caption"] for q in questions}
    scores = bench.score(questions, answers)
    assert scores.metrics["accuracy"] == 100.0
    assert scores.metrics["caption_accuracy"] == scores.metrics["caption_pairs_accuracy"] == 100.0
    assert scores.metrics["caption_exact"] == 100.0
    wrong = bench.score(questions, dict.fromkeys(answers, "purple."))
    assert wrong.metrics["caption_accuracy"] == 0.0
    assert scores.counts["captions"] == 4


def test_colour_shape_accuracy_pools_the_colour_and_shape_questions(demo_root):
    bench = build_benchmark("demo", demo_root)
    questions = [q for q in bench.load() if q.meta["kind"] in ("colour", "shape", "count")]
    colour = [q for q in questions if q.meta["kind"] == "colour"]
    shape = [q for q in questions if q.meta["kind"] == "shape"]
    assert colour and shape
    # every colour answer right, every shape and count answer wrong
    answers = {q.qid: q.meta["answer"] if q.meta["kind"] == "colour" else "nothing." for q in questions}
    metrics = bench.score(questions, answers).metrics
    assert metrics["accuracy_colour"] == 100.0 and metrics["accuracy_shape"] == 0.0
    assert metrics["accuracy_colour_shape"] == pytest.approx(100.0 * len(colour) / (len(colour) + len(shape)))


def test_colour_shape_accuracy_by_object_count_matches_the_drawn_scene(demo_root):
    """The records' object count is the scene's (re-derived from the generator's seed), and splits the score."""
    bench = build_benchmark("demo", demo_root)
    questions = [q for q in bench.load() if q.meta["kind"] in ("colour", "shape")]
    for q in questions:
        index = int(q.qid.split("/")[0].rsplit("-", 1)[1])
        rng = generator._rng(0, "sft", "val", index)
        rng.random()  # the text-only draw
        assert q.meta["objects"] == len(generator.sample_scene(rng).shapes)
    answers = {q.qid: q.meta["answer"] if q.meta["objects"] == 1 else "nothing." for q in questions}
    metrics = bench.score(questions, answers).metrics
    counts = sorted({q.meta["objects"] for q in questions})
    assert [k for k in metrics if k.endswith("obj")] == [f"accuracy_colour_shape_{n}obj" for n in counts]
    assert all(metrics[f"accuracy_colour_shape_{n}obj"] == (100.0 if n == 1 else 0.0) for n in counts)


def test_question_kinds_follow_the_generator_templates():
    assert question_kind("What colour is the circle?", True) == "colour"
    assert question_kind("What shape is the red object?", True) == "shape"
    assert question_kind("Is the red circle small or large?", True) == "size"
    assert question_kind("Is there a red circle?", True) == "exists"
    assert question_kind("How many sides does a triangle have?", False) == "text"


def test_drawn_objects_are_what_the_generator_drew(demo_root):
    """The caption field is the generator's record: it lists exactly the shapes of the scene it rendered."""
    records = json.loads((demo_root / "raw" / "pretrain_val.json").read_text())
    for i, rec in enumerate(records):
        scene = generator.sample_scene(generator._rng(0, "pretrain", "val", i))  # the same seeded draw
        assert drawn_objects(rec["caption"]) == [(s.colour, s.shape) for s in scene.shapes]


CAPTION = "two shapes: a small red circle on the left and a large blue square on the right."


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        (CAPTION, (True, True)),
        ("a red circle and a blue square", (True, True)),  # positions and sizes are not required
        ("blue squares and red circles.", (True, True)),  # plurals and any order
        ("a blue circle and a red square", (True, False)),  # right words, wrong pairs
        ("red blue circle square", (True, False)),
        ("a circle that is small and red and a square that is large and blue", (True, True)),  # shape first
        ("a circle that is small and blue and a square that is large and red", (True, False)),
        ("a red circle", (False, False)),  # a colour and a shape missing
        ("a red circle, a blue square and a green triangle", (False, False)),  # something not drawn
        ("a red circle and a blue square and a blue triangle", (False, False)),
        ("", (False, False)),
    ],
)
def test_caption_check(prediction, expected):
    assert caption_check(prediction, CAPTION) == expected


def test_a_text_that_is_not_a_demo_caption_is_refused():
    with pytest.raises(BenchmarkDataError):
        drawn_objects("three shapes: a small red circle.")  # the count word disagrees with the list


def test_every_benchmark_config_file_builds_its_benchmark(tmp_path):
    files = sorted((CONF / "benchmark").glob("*.yaml"))
    assert sorted(f.stem for f in files) == benchmark_names()
    for path in files:
        node = OmegaConf.to_container(OmegaConf.load(path).benchmark)
        name = node.pop("name")
        assert name == path.stem
        bench = build_benchmark(name, tmp_path, node)
        defaults = get_benchmark_class(name)(root=str(tmp_path))
        assert bench.suffix == defaults.suffix, f"{name}: config suffix differs from the class default"


def test_unknown_benchmarks_and_options_list_the_valid_ones(tmp_path):
    with pytest.raises(UnknownBenchmarkError, match=r"use one of .*vqav2"):
        build_benchmark("vqa3", tmp_path)
    with pytest.raises(UnknownBenchmarkError, match="no option colour"):
        build_benchmark("demo", tmp_path, {"colour": 1})
