"""The fast demo generator writes, byte for byte, what the original pipeline writes, with any library versions.

The original pipeline, rebuilt here from its parts: every sample drawn in order, its picture saved by Pillow as a
PNG file, the annotations dumped, then ``build_shards`` reading the pictures back (decode, resize, JPEG). The fast
one draws and encodes in blocks of one shard each, in worker processes that write their own shards, resizes only
around the shapes and caches whole sets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from eve_lightning.bench import demo_data
from eve_lightning.data import synthetic_shapes
from eve_lightning.data.geometry import band_geometry
from eve_lightning.data.make_shards import DEFAULT_SHARD_BYTES, build_shards
from eve_lightning.data.records import BuildOptions, prepare_record

RECIPE = {"max_turns": 10, "turns": "independent", "shuffled_captions": 0.5, "answers": "restated",
          "shape_first_captions": 0.5}  # fmt: skip


def manifest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def original_set(
    root: Path, *, num_pretrain: int, num_sft: int, num_val: int, seed: int, max_side: int | None, shard_size: int,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES, **content: Any,
) -> None:  # fmt: skip
    """The set as the original pipeline wrote it (without the marker and the parameter record)."""
    content = {"text_only": synthetic_shapes.TEXT_ONLY, **content}
    images = root / "raw" / "images"
    plan = {("pretrain", "train"): num_pretrain, ("pretrain", "val"): num_val, ("sft", "train"): num_sft,
            ("sft", "val"): num_val}  # fmt: skip
    for (task, split), count in plan.items():
        if count == 0:
            continue  # an empty split is not written
        records = []
        for i in range(count):
            record, picture = synthetic_shapes.draw_sample(i, task=task, split=split, seed=seed, **content)
            if picture is not None:
                (images / record["image"]).parent.mkdir(parents=True, exist_ok=True)
                picture.image.save(images / record["image"], format="PNG", compress_level=1)
            records.append(record)
        (root / "raw" / f"{task}_{split}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
        opts = BuildOptions(fmt="caption" if task == "pretrain" else "llava", images_dir=str(images), max_side=max_side)
        build_shards(records, root / task / split, opts, shard_size=shard_size, max_shard_bytes=max_shard_bytes,
                     workers=1, progress=False)  # fmt: skip


def generated(root: Path) -> dict[str, str]:
    """The manifest of a generated set without the marker and the parameter record."""
    return {k: v for k, v in manifest(root).items() if k not in (synthetic_shapes.MARKER_FILE, "generation.json")}


SETS = {
    "recipe_672": dict(num_pretrain=23, num_sft=25, num_val=6, seed=4, max_side=672, shard_size=7, **RECIPE),
    "defaults_1344": dict(num_pretrain=6, num_sft=9, num_val=2, seed=1, max_side=1344, shard_size=4),
    "keep_size": dict(num_pretrain=5, num_sft=7, num_val=0, seed=3, max_side=None, shard_size=500, text_only=0.4),
}


@pytest.mark.parametrize("name", list(SETS))
def test_the_generated_set_is_the_original_pipelines(tmp_path, name):
    params = SETS[name]
    original_set(tmp_path / "original", **params)
    synthetic_shapes.generate(tmp_path / "fast", workers=2, cache=False, **params)
    assert generated(tmp_path / "fast") == manifest(tmp_path / "original")


def test_a_shard_cut_by_the_byte_limit_is_numbered_as_the_original_numbers_it(tmp_path, monkeypatch):
    params = dict(num_pretrain=14, num_sft=3, num_val=1, seed=2, max_side=672, shard_size=6)
    limit = 30_000  # two or three pictures: the shards close early, and the ones after them move
    original_set(tmp_path / "original", max_shard_bytes=limit, **params)
    monkeypatch.setattr(synthetic_shapes, "DEFAULT_SHARD_BYTES", limit)
    summaries = synthetic_shapes.generate(tmp_path / "fast", workers=2, cache=False, **params)
    assert generated(tmp_path / "fast") == manifest(tmp_path / "original")
    assert summaries["pretrain/train"].shards > 3 and summaries["pretrain/train"].written == 14
    assert not list((tmp_path / "fast" / "pretrain" / "train").glob(f"{synthetic_shapes.PART_PREFIX}*"))


@pytest.mark.parametrize("max_side", [672, 1344, None])
def test_shard_samples_are_what_make_shards_makes_of_the_pictures(tmp_path, max_side):
    for task, fmt in (("pretrain", "caption"), ("sft", "llava")):
        for i in range(12):
            record, picture = synthetic_shapes.draw_sample(i, task=task, split="train", seed=7, text_only=0.3)
            member = None
            if picture is not None:
                png = synthetic_shapes.png_bytes(picture.image)
                (tmp_path / record["image"]).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / record["image"]).write_bytes(png)
                member = synthetic_shapes.shard_image(picture, png, max_side)
                assert synthetic_shapes.shard_image(picture.image, png, max_side) == member  # box found from pixels
            opts = BuildOptions(fmt=fmt, images_dir=str(tmp_path), max_side=max_side)  # type: ignore[arg-type]
            assert synthetic_shapes.shard_sample(i, record, member, fmt) == prepare_record(i, record, opts)


def test_the_fast_resize_is_pillows_resize_for_every_canvas():
    for side in (672, 1344):
        for k, canvas in enumerate(synthetic_shapes.CANVASES):
            target = (band_geometry(*canvas, side).eve.width, band_geometry(*canvas, side).eve.height)
            for index in range(3):
                rng = np.random.default_rng([k, index, side])
                while True:  # a scene drawn on this canvas
                    scene = synthetic_shapes.sample_scene(rng)
                    if (scene.width, scene.height) == canvas:
                        break
                picture, box = synthetic_shapes._render(scene, rng)
                want = picture.resize(target, Image.Resampling.BICUBIC).tobytes()
                assert synthetic_shapes.resize_bicubic(picture, target).tobytes() == want, (canvas, side)
                fast = synthetic_shapes.resize_bicubic(picture, target, scene.background, box)  # the drawn box
                assert fast.tobytes() == want, (canvas, side)
    assert set(synthetic_shapes._RESIZE_ORDERS.values()) <= {"hv", "vh"}  # every size pair takes the fast path


def test_the_box_of_a_drawn_picture_holds_every_pixel_of_its_shapes():
    for i in range(400):  # every canvas, shape and size many times over
        rng = np.random.default_rng(i)
        scene = synthetic_shapes.sample_scene(rng)
        image, (x0, y0, x1, y1) = synthetic_shapes._render(scene, rng)
        ys, xs = np.nonzero((np.asarray(image) != scene.background).any(-1))
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (i, scene)
        assert x0 >= xs.min() - 4 and y0 >= ys.min() - 4  # and hugs them


def test_the_fast_resize_of_any_picture_and_without_a_checked_order(monkeypatch):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))  # no plain background at all
    corner = Image.new("RGB", (200, 120), (9, 9, 9))
    corner.paste(Image.new("RGB", (30, 20), (200, 10, 10)), (0, 0))  # the shape touches the corner
    for picture in (noise, corner, Image.new("RGB", (200, 120), (30, 30, 30))):
        for target in ((240, 144), (150, 90), (200, 60), (80, 120)):
            want = picture.resize(target, Image.Resampling.BICUBIC).tobytes()
            assert synthetic_shapes.resize_bicubic(picture, target).tobytes() == want
    monkeypatch.setitem(synthetic_shapes._RESIZE_ORDERS, (200, 120, 240, 144), None)  # Pillow's own call
    assert synthetic_shapes.resize_bicubic(noise, (240, 144)).tobytes() == noise.resize((240, 144)).tobytes()


def test_the_cache_gives_the_same_set_without_generating_it(tmp_path, monkeypatch):
    params = dict(num_pretrain=5, num_sft=6, num_val=2, seed=8, shard_size=4, **RECIPE)
    cache = tmp_path / "cache"
    first = synthetic_shapes.generate(tmp_path / "a", workers=1, cache=cache, **params)
    want = manifest(tmp_path / "a")
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached set was generated again")

    with monkeypatch.context() as m:
        m.setattr(synthetic_shapes, "_run_blocks", no_generation)
        again = synthetic_shapes.generate(tmp_path / "b", workers=1, cache=cache, **params)
        m.setenv(synthetic_shapes.CACHE_ENV, str(cache))  # the DataModule's call: the folder the variable names
        synthetic_shapes.generate(tmp_path / "c", workers=1, overwrite=True, **params)
    assert manifest(tmp_path / "b") == manifest(tmp_path / "c") == want
    assert {k: v.line() for k, v in again.items()} == {
        k: v.line().replace(str(tmp_path / "a"), str(tmp_path / "b")) for k, v in first.items()
    }
    tar = tmp_path / "a" / "sft" / "train" / "shard-000000.tar"  # linked to the entry: written through, it changes
    with open(tar, "r+b") as f:
        f.write(b"x")
    synthetic_shapes.generate(tmp_path / "d", workers=1, cache=cache, **params)  # the changed entry is not used
    assert manifest(tmp_path / "d") == want
    assert (entry / synthetic_shapes.DemoCache.MANIFEST).is_file()  # stored again
    other = synthetic_shapes.generate(tmp_path / "e", workers=1, cache=cache, **{**params, "seed": 9})
    assert other["sft/train"].written == 6 and len(list(cache.iterdir())) == 2  # another seed, another entry


def test_the_cache_key_follows_what_decides_the_files():
    record = synthetic_shapes.generation_params(
        num_pretrain=10, num_sft=10, num_val=2, seed=0, max_side=672, max_turns=3
    )
    key = synthetic_shapes.cache_key(record, 500)
    assert key == synthetic_shapes.cache_key(dict(record), 500)
    assert key != synthetic_shapes.cache_key({**record, "seed": 1}, 500)
    assert key != synthetic_shapes.cache_key({**record, "answers": "restated"}, 500)
    assert key != synthetic_shapes.cache_key(record, 400)


def test_the_benchmark_times_the_generator_and_the_cache(tmp_path, capsys):
    out = demo_data.main(["--samples", "24", "--workers", "1", "--out", str(tmp_path / "o"),
                          "--cache", str(tmp_path / "c"), "--clean"])  # fmt: skip
    assert out["samples"] == 24 and out["samples_per_s"] > 0 and out["cache_restore_seconds"] >= 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert not (tmp_path / "o").exists() and not [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    assert demo_data.recipe_params(308000)["num_pretrain"] == 153600  # the recipe's set
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="did not write"):
        demo_data.main(["--samples", "24", "--out", str(tmp_path / "theirs")])
