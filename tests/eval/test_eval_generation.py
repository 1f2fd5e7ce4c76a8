"""Batched answers from a tiny random model: a batch answers exactly what each question answers alone."""

from __future__ import annotations

import pytest

from eve_lightning.eval.base import Question
from eve_lightning.eval.generation import BatchAnswerer, pad_batch
from eve_lightning.inference.engine import ChatEngine
from tests.helpers.eval_testkit import write_image


@pytest.fixture(scope="module")
def engine(eval_export):
    return ChatEngine.from_dir(eval_export, device="cpu")


def test_a_batch_answers_like_single_questions(engine, tmp_path):
    wide = write_image(tmp_path / "wide.png", (200, 40, 40), (120, 40))
    tall = write_image(tmp_path / "tall.png", (40, 40, 200), (30, 90))
    questions = [
        Question("wide", "What colour is it?", wide),
        Question("text", "Count from one to three."),
        Question("tall", "Describe the image.", tall),
    ]
    answerer = BatchAnswerer(engine, max_new_tokens=5, threads=2)
    batched = answerer(questions)
    alone = [answerer([q])[0] for q in questions]
    answerer.close()
    assert batched == alone
    assert all(isinstance(a, str) and a for a in batched)  # a random model still says something


def test_text_only_batches_carry_no_pixels(engine):
    encoded = [engine.encode(None, [("user", "hi")]), engine.encode(None, [("user", "a longer question here")])]
    batch = pad_batch(encoded, engine.loaded.tokenizer.pad_id)
    assert batch["pixel_values"] is None and batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"].sum(1).tolist() == [e["input_ids"].shape[1] for e in encoded]


def test_a_prompt_longer_than_the_context_gets_an_empty_answer(engine):
    long = Question("long", "word " * 5000)
    short = Question("short", "Hello?")
    answerer = BatchAnswerer(engine, max_new_tokens=3, threads=0)
    answers = answerer([long, short])
    assert answers[0] == "" and answers[1] == answerer([short])[0]
    assert answerer.too_long == 1
