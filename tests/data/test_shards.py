"""Shard writer on a hand-written LLaVA file with every quirk, shard reading, and the member allowlist."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eve_lightning.data import make_shards
from eve_lightning.data.make_shards import build_shards
from eve_lightning.data.records import BuildOptions, read_annotations
from eve_lightning.data.shards import (
    ShardInfo,
    UnsafeShardError,
    decode_sample,
    iter_shard,
    resolve_shards,
    split_member_name,
)
from eve_lightning.data.stream import SampleConfig, ShardStream


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)


@pytest.fixture
def llava_input(tmp_path, photos):
    """Images in nested folders (some broken) and a LLaVA JSON with every quirk; returns (ann, images, expected)."""
    images = tmp_path / "images"
    _save(photos["coffee"], images / "coco/train2017/000001.jpg", "JPEG", quality=90)
    _save(photos["chelsea_portrait"], images / "gqa/images/a/b/2.png", "PNG")
    _save(photos["astronaut"].convert("RGBA"), images / "ocr_vqa/3.png", "PNG")
    _save(photos["astronaut"].convert("CMYK"), images / "textvqa/4.jpg", "JPEG")
    _save(photos["camera"], images / "vg/VG_100K/5.jpg", "JPEG")
    _save(photos["astronaut"].resize((2000, 2000)), images / "huge/6.jpg", "JPEG")
    exact = photos["coffee"].resize((672, 448))
    _save(exact, images / "exact/7.jpg", "JPEG", quality=90)
    (images / "broken").mkdir(parents=True)
    (images / "broken/garbage.jpg").write_bytes(b"this is not an image at all")
    good = (images / "coco/train2017/000001.jpg").read_bytes()
    (images / "broken/truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "secret.jpg").write_bytes(good)

    def turns(*values):
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]

    records = [
        {
            "id": "img-start",
            "image": "coco/train2017/000001.jpg",
            "conversations": turns("<image>\nWhat is it?", "A cup."),
        },
        {
            "id": "img-end",
            "image": "gqa/images/a/b/2.png",
            "conversations": turns("Where is the cat?\n<image>", "Left."),
        },
        {"id": "text-only", "conversations": turns("Hi?", "Hello.", "Count to two.", "one, two.")},
        {
            "id": "multi",
            "image": "vg/VG_100K/5.jpg",
            "conversations": turns("<image>\nA?", "a.", "B?", "b.", "C?", "c."),
        },
        {"id": "rgba", "image": "ocr_vqa/3.png", "conversations": turns("<image>\nRead it.", "text.")},
        {"id": "cmyk", "image": "textvqa/4.jpg", "conversations": turns("<image>\nColour?", "blue.")},
        {"id": "no-placeholder", "image": "exact/7.jpg", "conversations": turns("What is this?", "coffee.")},
        {"id": "gpt-first", "conversations": [{"from": "gpt", "value": "hello"}, *turns("Q?", "A.")]},
        {"id": "missing", "image": "coco/train2017/999.jpg", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "garbage", "image": "broken/garbage.jpg", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "truncated", "image": "broken/truncated.jpg", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "huge", "image": "huge/6.jpg", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "no-conversations", "image": "coco/train2017/000001.jpg"},
        "not a record",
        {"id": "alternation", "conversations": [*turns("Q?", "A."), {"from": "gpt", "value": "again"}]},
        {"id": "placeholder-no-image", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "traversal", "image": "../secret.jpg", "conversations": turns("<image>\nQ?", "A.")},
        {"id": "empty-answer", "conversations": turns("Q?", "  ")},
        {"id": "bad-role", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    written = ["img-start", "img-end", "text-only", "multi", "rgba", "cmyk", "no-placeholder", "gpt-first"]
    skipped = {
        "missing_image": 1,
        "unreadable_image": 2,
        "too_many_pixels": 1,
        "bad_record": 2,
        "roles_not_alternating": 1,
        "image_token_without_image": 1,
        "bad_image_path": 1,
        "empty_answer": 1,
        "bad_role": 1,
    }
    return ann, images, written, skipped


def _shard_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.tar")) + sorted(folder.glob("*.json")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_converter_counts_reasons_and_content(llava_input, tmp_path, capsys):
    ann, images, written, skipped = llava_input
    out = tmp_path / "shards"
    args = ["--format", "llava", "--annotations", str(ann), "--images", str(images), "--out", str(out)]
    args += ["--max-side", "672", "--max-pixels", "2000000", "--shard-size", "3", "--workers", "1", "--no-progress"]
    summary = make_shards.main(args)
    assert summary.read == 19 == summary.written + sum(summary.skipped.values())
    assert summary.written == len(written) and dict(summary.skipped) == skipped
    assert "read 19 records; wrote 8 samples (6 with an image) in 3 shards" in capsys.readouterr().out
    report = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(report) == 11 and {r["reason"] for r in report} == set(skipped)
    assert {r["id"] for r in report if r["reason"] == "unreadable_image"} == {"garbage", "truncated"}
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 8 and index["num_images"] == 6 and index["read"] == 19
    assert [s["num_samples"] for s in index["shards"]] == [3, 3, 2]

    samples = [decode_sample(raw) for info in resolve_shards(str(out), columns=True) for raw in iter_shard(info.url)]
    by_id = {s.meta["id"]: s for s in samples}
    assert [s.meta["id"] for s in samples] == written  # input order kept
    assert by_id["img-end"].turns[0].text == "<image>\nWhere is the cat?"  # moved to the start
    assert by_id["no-placeholder"].turns[0].text == "<image>\nWhat is this?"  # added
    assert by_id["text-only"].image is None and len(by_id["text-only"].turns) == 4
    assert [t.text for t in by_id["gpt-first"].turns] == ["Q?", "A."]
    assert len(by_id["multi"].turns) == 6
    # stored images have the exact EVE band size at 672; an exactly sized JPEG is copied byte for byte
    for sid, size in {
        "img-start": (672, 448),
        "img-end": (448, 672),
        "rgba": (672, 672),
        "no-placeholder": (672, 448),
    }.items():
        assert Image.open(io.BytesIO(by_id[sid].image)).size == size
    assert by_id["no-placeholder"].image == (images / "exact/7.jpg").read_bytes()
    assert Image.open(io.BytesIO(by_id["cmyk"].image)).mode == "RGB"
    side = json.loads((out / "shard-000000.idx.json").read_text())
    assert side["keys"] == ["000000000", "000000001", "000000002"] and side["has_image"] == [1, 1, 0]
    assert side["width"][:2] == [672, 448] and side["words"][2] == 7


def test_converter_is_reproducible_across_workers(llava_input, tmp_path):
    ann, images, _, _ = llava_input
    opts = BuildOptions(fmt="llava", images_dir=str(images), max_side=672, max_pixels=2_000_000)
    records = list(read_annotations(ann))
    build_shards(records, tmp_path / "a", opts, shard_size=4, workers=1)
    build_shards(records, tmp_path / "b", opts, shard_size=4, workers=2)
    assert _shard_digest(tmp_path / "a") == _shard_digest(tmp_path / "b")
    with pytest.raises(FileExistsError):
        build_shards(records, tmp_path / "a", opts)


def test_jsonl_and_caption_format(tmp_path, photos):
    images = tmp_path / "img"
    _save(photos["rocket_wide"], images / "w/1.jpg", "JPEG")
    lines = [
        json.dumps({"id": "a", "image": "w/1.jpg", "caption": "a wide rocket."}),
        "{not json",
        json.dumps(
            {
                "id": "b",
                "image": "w/1.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
                    {"from": "gpt", "value": "a rocket on a pad."},
                ],
            }
        ),
        json.dumps({"id": "c", "caption": "no image"}),
    ]
    ann = tmp_path / "caps.jsonl"
    ann.write_text("\n".join(lines) + "\n")
    out = tmp_path / "caps"
    summary = make_shards.main(
        ["--format", "caption", "--annotations", str(ann), "--images", str(images), "--out", str(out), "--no-progress"]
    )
    assert (summary.read, summary.written, dict(summary.skipped)) == (4, 2, {"bad_json": 1, "missing_image_field": 1})
    samples = [decode_sample(raw) for raw in iter_shard(str(out / "shard-000000.tar"))]
    assert [s.turns[-1].text for s in samples] == ["a wide rocket.", "a rocket on a pad."]
    assert Image.open(io.BytesIO(samples[0].image)).size == (640, 160)  # no --max-side: original kept


def test_iter_shard_ranges_and_offsets(demo_dir):
    info = resolve_shards(str(demo_dir / "sft" / "train"), columns=True)[0]
    full = [raw["__key__"] for raw in iter_shard(info.url)]
    assert full == info.keys and len(full) == 10
    assert [r["__key__"] for r in iter_shard(info.url, 3, 7)] == full[3:7]
    seeked = list(iter_shard(info.url, 4, 9, offset=int(info.offsets[4])))
    assert [r["__key__"] for r in seeked] == full[4:9] and [r["__index__"] for r in seeked] == list(range(4, 9))
    assert [r["__key__"] for r in iter_shard(info.url, 8)] == full[8:]


def test_split_member_name():
    assert split_member_name("000123.jpg") == ("000123", "jpg")
    assert split_member_name("a/b/000123.seg.PNG") == ("a/b/000123", "seg.png")
    assert split_member_name("README") == ("README", "")


class _Payload:
    """Would create a marker file if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _tar_with(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.reliability
@pytest.mark.parametrize("ext", ["pth", "pkl", "pickle", "npy", "pt"])
def test_pickle_member_is_refused(tmp_path, tok, ext):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    good = json.dumps({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}).encode()
    shard = tmp_path / "evil.tar"
    _tar_with(shard, {"000.json": good, "001.json": good, f"001.{ext}": payload, "002.json": good})
    with pytest.raises(UnsafeShardError, match=rf"001\.{ext}.*unpickled or torch.load"):
        list(iter_shard(str(shard)))
    with pytest.raises(UnsafeShardError):  # also when the member lies in a skipped range
        list(iter_shard(str(shard), start=2))
    with pytest.raises(UnsafeShardError):
        resolve_shards(str(shard))  # counting a shard without an index streams it: refused as well
    stream = ShardStream(
        [ShardInfo(str(shard), 3)],
        tok,
        SampleConfig("vicuna_v1", 672, 2048),
        batch_size=1,
        resampled=True,
        batches_per_rank=2,
        shuffle=False,
    )
    with pytest.raises(UnsafeShardError):
        list(stream.iter_worker(0))
    assert not marker.exists()


def test_unknown_member_is_refused(tmp_path):
    shard = tmp_path / "odd.tar"
    _tar_with(shard, {"000.json": b"{}", "000.exe": b"MZ"})
    with pytest.raises(UnsafeShardError, match="outside the allowlist"):
        list(iter_shard(str(shard)))
    _tar_with(shard, {"000.json.gz": b"\x1f\x8b"})
    with pytest.raises(UnsafeShardError):
        list(iter_shard(str(shard)))


def test_decode_allowlisted_members():
    raw = {
        "__key__": "k",
        "__url__": "u",
        "__index__": 0,
        "txt": b"a red circle.",
        "cls": b"3",
        "png": _png_bytes(),
    }
    sample = decode_sample(raw)
    assert sample.turns[-1].text == "a red circle." and sample.meta["cls"] == "3" and sample.image is not None


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
