"""The procedural demo set: reproducible, varied geometry, small vocabulary, pictures that match their text."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eve_lightning.data import demo as demo_cli  # `python -m eve_lightning.data.demo`, as users type it
from eve_lightning.data import synthetic_shapes


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix in (".tar", ".json", ".png")):
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_reproducible_with_any_worker_count(tmp_path):
    kw = {"num_pretrain": 10, "num_sft": 10, "num_val": 4, "seed": 11, "shard_size": 4}
    synthetic_shapes.generate(tmp_path / "a", workers=1, **kw)
    synthetic_shapes.generate(tmp_path / "b", workers=2, **kw)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    synthetic_shapes.generate(tmp_path / "c", workers=1, **{**kw, "seed": 12})
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_variety_and_vocabulary(demo_dir):
    raw = demo_dir / "raw"
    pre = json.loads((raw / "pretrain_train.json").read_text())
    sft = json.loads((raw / "sft_train.json").read_text())
    sizes = [Image.open(raw / "images" / r["image"]).size for r in pre + sft if "image" in r]
    ratios = [w / h for w, h in sizes]
    assert min(ratios) <= 1 / 2 and max(ratios) >= 4 and any(r == 1 for r in ratios)  # portrait, very wide, square
    words = {w.strip(".,:") for r in pre for w in r["caption"].split()}
    assert len(words) <= 40  # tiny, learnable vocabulary
    answers = {t["value"] for r in sft for t in r["conversations"][1::2]}
    assert {"yes.", "no."} & answers and any(a.endswith("circle.") for a in answers)
    text_only = [r for r in sft if "image" not in r]
    assert 0 < len(text_only) < len(sft) // 3
    firsts = [r["conversations"][0]["value"] for r in sft if "image" in r]
    assert any(v.startswith("<image>\n") for v in firsts) and any(v.endswith("\n<image>") for v in firsts)
    assert any(len(r["conversations"]) >= 4 for r in sft)  # multi-turn
    assert sum(1 for _ in (demo_dir / "pretrain" / "val").glob("*.tar")) == 2  # 20 held-out in shards of 10


def check_pictures_match_captions(records: list[dict], images: Path) -> None:
    for rec in records:
        img = np.asarray(Image.open(images / rec["image"]).convert("RGB"))
        h, w, _ = img.shape
        long_axis = 0 if h > w else 1  # thirds run along the long side
        for colour, rgb in synthetic_shapes.COLOURS.items():
            ys, xs = np.nonzero((img == rgb).all(-1))
            if colour not in rec["caption"]:
                assert len(ys) == 0, (rec["id"], colour)
                continue
            phrase = rec["caption"].split(colour, 1)[1].split(",")[0].split(" and ")[0]
            slot = (
                next(i for i, p in enumerate(("left", "middle", "right")) if p in phrase)
                if h <= w
                else next(i for i, p in enumerate(("top", "middle", "bottom")) if p in phrase)
            )
            centre = (ys if long_axis == 0 else xs).mean() / (h if long_axis == 0 else w)
            assert slot / 3 < centre < (slot + 1) / 3, (rec["id"], colour, phrase)


def test_pictures_match_captions(demo_dir):
    raw = demo_dir / "raw"
    check_pictures_match_captions(json.loads((raw / "pretrain_train.json").read_text())[:30], raw / "images")


@pytest.mark.slow
def test_shuffled_captions_list_the_same_objects_in_another_order(tmp_path):
    make = lambda i, share: synthetic_shapes.make_record(  # noqa: E731
        i, task="pretrain", split="train", seed=3, images_dir=str(tmp_path), text_only=0.0, shuffled_captions=share
    )
    plain = [make(i, 0.0) for i in range(300)]
    shuffled = [make(i, 0.5) for i in range(300)]
    assert plain[:50] == [make(i, 0.0) for i in range(50)]  # no share, no draw: the default stream
    check_pictures_match_captions(shuffled[:60], tmp_path)  # every object still where its phrase says
    listing = lambda c: [w for w in c.replace(",", "").replace(".", "").split() if w in synthetic_shapes.SHAPES]  # noqa: E731
    multi = [(p, s) for p, s in zip(plain, shuffled) if len(listing(p["caption"])) > 1]
    reordered = [s for p, s in multi if listing(s["caption"]) != listing(p["caption"])]
    assert all(sorted(listing(s["caption"])) == sorted(listing(p["caption"])) for p, s in multi)
    # half are shuffled; a shuffle keeps the order 1/2 (two objects) or 1/6 (three objects) of the time
    assert 0.2 < len(reordered) / len(multi) < 0.5
    with pytest.raises(ValueError, match="shuffled_captions is a share"):
        synthetic_shapes.generate(tmp_path / "x", num_pretrain=1, num_sft=1, num_val=1, shuffled_captions=1.5)


def test_restated_answers_name_their_object_and_keep_the_conversations(tmp_path):
    scene = synthetic_shapes.Scene(
        800, 400, (250, 250, 250),
        (synthetic_shapes.ShapeSpec("circle", "red", "small", 0),
         synthetic_shapes.ShapeSpec("square", "blue", "large", 2)),
    )  # fmt: skip
    qa = dict(synthetic_shapes.questions(scene, np.random.default_rng(0)))
    restated = {
        q: a for q, a, _ in synthetic_shapes.question_items(scene, np.random.default_rng(0), answers="restated")
    }
    assert restated["What colour is the circle?"] == "the circle is red."
    assert restated["What shape is the blue object?"] == "the blue object is a square."
    assert restated["Where is the blue square?"] == "the blue square is on the right."
    assert restated["Is the red circle small or large?"] == "the red circle is small."
    assert restated["How many shapes are there?"] == qa["How many shapes are there?"] == "two."
    make = lambda i, answers: synthetic_shapes.make_record(  # noqa: E731
        i, task="sft", split="val", seed=0, images_dir=str(tmp_path), text_only=0.1, max_turns=10,
        turns="independent", answers=answers,
    )  # fmt: skip
    for i in range(60):  # the same questions in the same order; only the object answers grow a subject
        short, long = make(i, "short")["conversations"], make(i, "restated")["conversations"]
        assert [t["value"] for t in short[::2]] == [t["value"] for t in long[::2]]
        assert all(b == a or b.endswith(f" is {a}") for a, b in zip(
            [t["value"] for t in short[1::2]], [t["value"] for t in long[1::2]]))  # fmt: skip
    with pytest.raises(ValueError, match="answers must be one of short, restated"):
        synthetic_shapes.generate(tmp_path / "x", num_pretrain=1, num_sft=1, num_val=1, answers="long")


def test_shape_first_captions_name_the_same_objects_and_only_in_training(tmp_path):
    make = lambda i, split, share: synthetic_shapes.make_record(  # noqa: E731
        i, task="pretrain", split=split, seed=3, images_dir=str(tmp_path), text_only=0.0, shuffled_captions=0.5,
        shape_first_captions=share,
    )  # fmt: skip
    objects = re.compile(r"a (\w+) that is (\w+) and (\w+) (on the \w+|in the middle|at the \w+)")
    canonical = re.compile(r"a (\w+) (\w+) (\w+) (on the \w+|in the middle|at the \w+)")
    plain = [make(i, "train", 0.0)["caption"] for i in range(200)]
    assert plain[:40] == [make(i, "train", 0.0)["caption"] for i in range(40)]  # no share, no draw
    mixed = [make(i, "train", 0.5)["caption"] for i in range(200)]
    flipped = [(p, m) for p, m in zip(plain, mixed) if m != p]
    assert 0.35 < len(flipped) / len(plain) < 0.65
    for p, m in flipped:  # shape, size, colour and position of every object, in the same order
        assert [(sh, z, c, w) for sh, z, c, w in objects.findall(m)] == [
            (sh, z, c, w) for z, c, sh, w in canonical.findall(p)
        ]
    held_out = [make(i, "val", 1.0)["caption"] for i in range(20)]  # the evaluation reads the canonical form
    assert held_out == [make(i, "val", 0.0)["caption"] for i in range(20)]
    with pytest.raises(ValueError, match="shape_first_captions is a share"):
        synthetic_shapes.generate(tmp_path / "x", num_pretrain=1, num_sft=1, num_val=1, shape_first_captions=-0.1)


def answer_given_away(conversation: list[dict]) -> list[bool]:
    """For each colour or shape question: was its object's colour-shape pair already written in an earlier turn?"""
    out, before = [], ""
    for q, a in zip(conversation[::2], conversation[1::2]):
        q, a = q["value"].replace("<image>", "").strip(), a["value"]
        colour = re.match(r"What colour is the (\w+)\?", q)
        shape = re.match(r"What shape is the (\w+) object\?", q)
        if colour or shape:
            word = a.rstrip(".").split()[-1]
            pair = f"{word} {colour.group(1)}" if colour else f"{shape.group(1)} {word}"
            out.append(pair in before or (f"the {pair.split()[1]}? {pair.split()[0]}" in before)
                       or (f"{pair.split()[0]} object? a {pair.split()[1]}" in before))  # fmt: skip
        before += f" {q} {a}"
    return out


def test_independent_turns_never_give_an_answer_away(tmp_path):
    make = lambda i, turns: synthetic_shapes.make_record(  # noqa: E731
        i, task="sft", split="train", seed=0, images_dir=str(tmp_path), text_only=0.1, max_turns=10, turns=turns
    )
    free = [make(i, "any") for i in range(300)]
    independent = [make(i, "independent") for i in range(300)]
    given_away = [x for r in free for x in answer_given_away(r["conversations"])]
    assert sum(given_away) > len(given_away) / 3  # the check finds the shortcut where it exists
    asked = [x for r in independent for x in answer_given_away(r["conversations"])]
    assert len(asked) > 100 and not any(asked)
    with_image = [r for r in independent if "image" in r]
    for r in with_image:
        questions = [t["value"].replace("<image>", "").strip() for t in r["conversations"][::2]]
        assert "Describe the image." not in questions or questions == ["Describe the image."]
        assert len(questions) <= r["objects"] + 2  # one question per object, the count and a "no" question
    alone = sum(1 for r in with_image if len(r["conversations"]) == 2 and "Describe" in r["conversations"][0]["value"])
    assert 0.2 < alone / len(with_image) < 0.5  # DESCRIBE_ALONE = 1/3
    with pytest.raises(ValueError, match="turns must be one of any, independent"):
        synthetic_shapes.generate(tmp_path / "x", num_pretrain=1, num_sft=1, num_val=1, turns="some")


def test_caption_and_questions_of_a_fixed_scene():
    scene = synthetic_shapes.Scene(
        800,
        400,
        (250, 250, 250),
        (
            synthetic_shapes.ShapeSpec("circle", "red", "small", 0),
            synthetic_shapes.ShapeSpec("square", "blue", "large", 2),
        ),
    )
    text = "two shapes: a small red circle on the left and a large blue square on the right."
    assert synthetic_shapes.caption(scene) == text
    qa = dict(synthetic_shapes.questions(scene, np.random.default_rng(0)))
    assert qa["What colour is the circle?"] == "red."
    assert qa["What shape is the blue object?"] == "a square."
    assert qa["Where is the blue square?"] == "on the right."
    assert qa["How many shapes are there?"] == "two."
    assert qa["Is the red circle small or large?"] == "small."


def test_max_turns_gives_denser_conversations_and_keeps_the_default_stream(tmp_path):
    default = [synthetic_shapes.make_record(i, task="sft", split="val", seed=0, images_dir=str(tmp_path), text_only=0.1)
               for i in range(40)]  # fmt: skip
    dense = [synthetic_shapes.make_record(i, task="sft", split="val", seed=0, images_dir=str(tmp_path), text_only=0.1,
                              max_turns=10) for i in range(40)]  # fmt: skip
    assert default == [
        synthetic_shapes.make_record(
            i, task="sft", split="val", seed=0, images_dir=str(tmp_path), text_only=0.1, max_turns=3
        )
        for i in range(40)
    ]
    turns = lambda recs: [len(r["conversations"]) // 2 for r in recs if "image" in r]  # noqa: E731
    assert max(turns(default)) == 3 and max(turns(dense)) > 3
    assert sum(turns(dense)) > 2 * sum(turns(default))
    for r in dense:  # each question once, never more than the picture has
        questions = [t["value"].replace("<image>", "").strip() for t in r["conversations"][::2]]
        assert len(questions) == len(set(questions)) <= 10
    with pytest.raises(ValueError, match="max_turns must be at least 1"):
        synthetic_shapes.generate(tmp_path / "x", num_pretrain=1, num_sft=1, num_val=1, max_turns=0)


def test_default_records_are_pinned(tmp_path):
    """The default stream of records (what every existing demo set holds) must not move by accident."""
    records = [
        synthetic_shapes.make_record(i, task=task, split=split, seed=0, images_dir=str(tmp_path), text_only=0.1)
        for task in ("sft", "pretrain")
        for split in ("train", "val")
        for i in range(12)
    ]
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    assert digest == "844957e4b688a9a0e477294efdc33079fa831376631c7c738b00c7b110f6db9d"


def test_reuse_keeps_a_set_of_the_same_parameters_and_regenerates_another(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--out", str(out), "--num-pretrain", "2", "--num-sft", "2", "--num-val", "1", "--workers", "1"]
    demo_cli.main([*args, "--reuse"])
    assert synthetic_shapes.recorded_params(out)["max_turns"] == 3
    stamp = (out / "sft" / "train" / "index.json").stat().st_mtime_ns
    demo_cli.main([*args, "--reuse"])
    assert "same parameters already; kept" in capsys.readouterr().out
    assert (out / "sft" / "train" / "index.json").stat().st_mtime_ns == stamp
    demo_cli.main([*args, "--reuse", "--max-turns", "6"])
    assert synthetic_shapes.recorded_params(out)["max_turns"] == 6
    assert (out / "sft" / "train" / "index.json").stat().st_mtime_ns != stamp  # really made again
    (out / "pretrain" / "val" / "index.json").unlink()  # an incomplete set is made again too
    demo_cli.main([*args, "--reuse", "--max-turns", "6"])
    assert (out / "pretrain" / "val" / "index.json").is_file()
    (out / synthetic_shapes.PARAMS_FILE).write_text("{trunc")
    assert synthetic_shapes.recorded_params(out) is None


def test_an_interrupted_generation_leaves_no_record(tmp_path, monkeypatch):
    out = tmp_path / "d"
    synthetic_shapes.generate(out, num_pretrain=2, num_sft=2, num_val=1)
    assert synthetic_shapes.recorded_params(out) is not None

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_shapes, "_run_blocks", fail)
    with pytest.raises(KeyboardInterrupt):
        synthetic_shapes.generate(out, num_pretrain=5, num_sft=5, num_val=1, overwrite=True)
    assert synthetic_shapes.recorded_params(out) is None
