"""The fast demo generator writes, byte for byte, what the original pipeline writes, with any library versions.

The original pipeline, rebuilt here from its parts: every sample drawn in order, its picture saved by Pillow as a
PNG file, the annotations dumped, then ``build_shards`` reading the pictures back (decode, resize, JPEG). The fast
one draws and encodes in blocks of one shard each, in worker processes that write their own shards, encodes the
PNG files itself (Pillow's filters, zlib), resizes only around the shapes from Pillow's weights, builds the tar
shards in memory and caches whole sets. Its parts are checked against Pillow, ``json`` and ``tarfile`` below.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from eve_lightning.bench import demo_data
from eve_lightning.data import bicubic_resize, png_encoder, synthetic_shapes
from eve_lightning.data.geometry import band_geometry
from eve_lightning.data.make_shards import DEFAULT_SHARD_BYTES, ShardWriter, build_shards
from eve_lightning.data.records import BuildOptions, prepare_record
from eve_lightning.data.shards import tar_member

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
    assert set(bicubic_resize._RESIZE_ORDERS.values()) <= {"hv", "vh"}  # every size pair takes the fast path


def test_the_box_of_a_drawn_picture_holds_every_pixel_of_its_shapes():
    for i in range(400):  # every canvas, shape and size many times over
        rng = np.random.default_rng(i)
        scene = synthetic_shapes.sample_scene(rng)
        image, (x0, y0, x1, y1) = synthetic_shapes._render(scene, rng)
        ys, xs = np.nonzero((np.asarray(image) != scene.background).any(-1))
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (i, scene)
        assert x0 >= xs.min() - 4 and y0 >= ys.min() - 4  # and hugs them


def test_each_shape_is_inside_its_own_box():
    for i in range(200):
        sketch = synthetic_shapes._layout(synthetic_shapes.sample_scene(rng := np.random.default_rng(i)), rng)
        for stroke, (x0, y0, x1, y1) in zip(sketch.strokes, sketch.parts):
            alone = synthetic_shapes.Sketch(sketch.scene, (stroke,), sketch.box, ((x0, y0, x1, y1),)).paint()
            ys, xs = np.nonzero((np.asarray(alone) != sketch.scene.background).any(-1))
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (i, stroke)


def pillow_png(image: Image.Image) -> bytes:
    """The PNG file Pillow writes, as the original pipeline saved the pictures."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=synthetic_shapes.PNG_LEVEL)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_the_png_encoder_writes_pillows_bytes_for_photographs(name):
    data = pytest.importorskip("skimage.data")
    image = Image.fromarray(getattr(data, name)())  # RGB; the astronaut's stream fills several IDAT chunks
    assert synthetic_shapes.png_bytes(image) == pillow_png(image)
    for mode in ("L", "RGBA"):  # other modes go through Pillow's own encoder
        assert synthetic_shapes.png_bytes(image.convert(mode)) == pillow_png(image.convert(mode))


def test_the_png_encoder_writes_pillows_bytes_for_drawn_pictures_in_any_order():
    sketches = [s for i in range(80) if (s := synthetic_shapes.sketch_sample(
        i, task="sft", split="train", seed=6, text_only=0.1)[1]) is not None]  # fmt: skip
    sketches.sort(key=lambda k: (k.scene.width, k.scene.height, k.scene.background, k.box[1]))
    want = [pillow_png(k.paint()) for k in sketches]
    for order in (sketches, sketches[::-1]):  # sharing the plain rows on top, then starting over each time
        encoder = png_encoder.PngEncoder()
        jobs = [encoder.read(k.paint(), k.scene.background, k.parts) for k in order]
        assert encoder.finish(jobs) == (want if order is sketches else want[::-1])


@pytest.mark.parametrize("background", [(0, 0, 0), (250, 250, 250), (30, 0, 205)])
def test_the_png_encoder_writes_pillows_bytes_for_boxes_anywhere(background):
    rng = np.random.default_rng(sum(background))
    for _ in range(25):
        width, height = int(rng.integers(1, 70)), int(rng.integers(1, 50))
        image = Image.new("RGB", (width, height), background)
        boxes = []
        for _ in range(int(rng.integers(0, 4))):  # patches of a few levels, touching the edges now and then
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = int(rng.integers(x0, width + 1)), int(rng.integers(y0, height + 1))
            patch = rng.choice(np.array([0, 1, 127, 128, 255], np.uint8), (y1 - y0, x1 - x0, 3))
            image.paste(Image.fromarray(patch), (x0, y0))
            boxes.append((x0, y0, x1, y1))
        assert synthetic_shapes.png_bytes(image, background, boxes) == pillow_png(image), (width, height, boxes)


def resize_from_taps(pixels: np.ndarray, new_size: int) -> np.ndarray:
    """Pillow's horizontal bicubic pass of ``pixels`` [rows, size, 3], from ``_pillow_taps`` (every output)."""
    first, _, weights = bicubic_resize._pillow_taps(pixels.shape[1], new_size)
    taps = np.minimum(first[:, None] + np.arange(weights.shape[1]), pixels.shape[1] - 1)  # [new_size, ksize]
    total = (pixels[:, taps].astype(np.int64) * weights[None, :, :, None]).sum(2) + (1 << 21)
    return np.clip(total >> 22, 0, 255).astype(np.uint8)


def test_the_bicubic_weights_are_pillows():
    pairs = {(300, 200), (200, 300), (97, 131), (131, 97), (10, 3)}
    for side in (672, 1344):
        for canvas in synthetic_shapes.CANVASES:
            eve = band_geometry(*canvas, side).eve
            pairs |= {(canvas[0], eve.width), (canvas[1], eve.height)}
    rng = np.random.default_rng(0)
    for size, new_size in sorted(p for p in pairs if p[0] != p[1]):
        pixels = rng.integers(0, 256, (24, size, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(pixels).resize((new_size, 24), Image.Resampling.BICUBIC))
        assert np.array_equal(resize_from_taps(pixels, new_size), want), (size, new_size)


@pytest.mark.parametrize("canvas", [(800, 400), (400, 800), (960, 540), (256, 768), (448, 448)])
def test_the_fast_resize_of_every_kind_of_box_anywhere(canvas):
    """Solid rectangles, single runs and noise (Pillow's windows, with outputs off the pattern) all over a canvas."""
    target = (band_geometry(*canvas, 672).eve.width, band_geometry(*canvas, 672).eve.height)
    rng = np.random.default_rng(canvas[0])
    for _ in range(12):
        picture = Image.new("RGB", canvas, (205, 205, 205))
        parts = []
        for kind in ("rectangle", "ellipse", "noise"):
            w, h = int(rng.integers(8, canvas[0] // 4)), int(rng.integers(8, canvas[1] // 4))
            x0, y0 = int(rng.integers(0, canvas[0] - w)), int(rng.integers(0, canvas[1] - h))
            if kind == "noise":
                picture.paste(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), (x0, y0))
            else:
                getattr(ImageDraw.Draw(picture), kind)((x0, y0, x0 + w - 1, y0 + h - 1), fill=(40, 80, 220))
            parts.append((x0, y0, x0 + w, y0 + h))
        box = png_encoder.union_box(parts)
        want = picture.resize(target, Image.Resampling.BICUBIC).tobytes()
        got = synthetic_shapes.resize_bicubic(picture, target, (205, 205, 205), box, parts)
        assert got.tobytes() == want, (canvas, parts)


def test_the_annotations_are_jsons_indented_text():
    records = [synthetic_shapes.sketch_sample(i, task=task, split="train", seed=2, text_only=0.3, max_turns=4)[0]
               for task in ("pretrain", "sft") for i in range(20)]  # fmt: skip
    odd = {"empty": [], "none": {}, "values": [1, -2.5, None, True, False, 'é"\\\n'], "deep": {"a": [{"b": []}]}}
    for value in [*records, odd]:
        assert " " + synthetic_shapes._indented_json(value, 1) == json.dumps([value], indent=1)[2:-2]


def test_the_shard_is_the_shard_writers(tmp_path):
    samples = []
    for i in range(9):
        record, picture = synthetic_shapes.draw_sample(i, task="sft", split="train", seed=3, text_only=0.3)
        member = None if picture is None else synthetic_shapes.shard_image(picture, b"png", 672)
        samples.append(synthetic_shapes.shard_sample(i, record, member, "llava"))
    writer = ShardWriter(tmp_path, shard_size=len(samples))
    shard = synthetic_shapes._ShardBytes()
    for sample in samples:
        writer.add(sample)
        shard.add(sample)
    entry = writer.close()["shards"][0]
    assert shard.tar() == (tmp_path / entry["file"]).read_bytes()
    assert shard.sidecar() == (tmp_path / entry["sidecar"]).read_bytes()
    assert (shard.samples, shard.images, shard.words) == (entry["num_samples"], entry["num_images"], entry["words"])
    for name, size in (("000000001.json", 0), ("x" * 100, 1 << 20)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(*tar_member(name, bytes(size)))
        assert synthetic_shapes._tar_header(name, size) == buf.getvalue()[:512]


def test_the_fast_resize_of_any_picture_and_without_a_checked_order(monkeypatch):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))  # no plain background at all
    corner = Image.new("RGB", (200, 120), (9, 9, 9))
    corner.paste(Image.new("RGB", (30, 20), (200, 10, 10)), (0, 0))  # the shape touches the corner
    for picture in (noise, corner, Image.new("RGB", (200, 120), (30, 30, 30))):
        for target in ((240, 144), (150, 90), (200, 60), (80, 120)):
            want = picture.resize(target, Image.Resampling.BICUBIC).tobytes()
            assert synthetic_shapes.resize_bicubic(picture, target).tobytes() == want
    monkeypatch.setitem(bicubic_resize._RESIZE_ORDERS, (200, 120, 240, 144), None)  # Pillow's own call
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
    assert out["cpu_ms_per_sample"] > 0 and 0 < out["cpu_busy"] < 1.2  # one worker: busy at most the whole time
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert not (tmp_path / "o").exists() and not [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    assert demo_data.recipe_params(308000)["num_pretrain"] == 153600  # the recipe's set
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="did not write"):
        demo_data.main(["--samples", "24", "--out", str(tmp_path / "theirs")])


def test_the_benchmark_counts_the_cpu_time_of_worker_processes():
    """What tells slow cores from waiting workers: CPU seconds include the pool's processes once they end."""
    import subprocess
    import sys

    before = demo_data.cpu_seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert demo_data.cpu_seconds() - before >= 0.35  # the child's 0.4 s (the parent only waited)
