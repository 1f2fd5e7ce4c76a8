"""The data path never destroys a user's files, never decodes a pixel bomb, and tells a failed build by its exit code.

- Demo data is generated only into its own folder: a folder without an index is an error naming make_shards.
- Images over the pixel cap are dropped (reading) or skipped (writing) on their header, before any decode: the
  oversized test image is a bare PNG header claiming 13000 x 13000 px, so decoding it would fail differently.
- make_shards exits 1 when nothing was written or too many records were skipped, 2 on a usage error.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from eve_lightning.data import synthetic_shapes
from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.make_shards import cli
from eve_lightning.data.shards import DataSourceError

pytestmark = pytest.mark.reliability


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, IHDR and IEND: Pillow reads the size from it, decoding it would fail (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def with_bomb(src: Path, dst: Path) -> str:
    """Copy a shard folder, the first image replaced by a 13000 x 13000 header of the same length; its key."""
    shutil.copytree(src, dst)
    tar_path = sorted(dst.glob("*.tar"))[0]
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith((".jpg", ".png")))
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            if m.name == victim:
                bomb = png_header(13000, 13000)
                data = bomb + b"\0" * (len(data) - len(bomb))  # same size: the index offsets stay valid
            tar.addfile(m, io.BytesIO(data))
    return victim.split(".", 1)[0]


def test_the_reader_drops_an_image_over_the_pixel_cap_without_decoding_it(demo_data_dir, tmp_path):
    shards = tmp_path / "sft"
    key = with_bomb(demo_data_dir / "demo" / "sft" / "train", shards)
    dm = EveDataModule(
        train_shards=str(shards), task="sft", batch_size=4, loader={"num_workers": 0, "pin_memory": False}
    )
    batches = list(dm.train_dataloader())
    stats = [b["meta"]["stats"] for b in batches]
    assert sum(s.get("dropped_too_many_pixels", 0) for s in stats) == 1
    assert sum(s.get("dropped_bad_image", 0) for s in stats) == 0  # never decoded (that would fail as bad_image)
    keys = [k for b in batches for k in b["meta"]["keys"] if k != "<filler>"]
    assert len(keys) == 47 and not any(k.endswith(f"#{key}") for k in keys)


@pytest.fixture
def annotations(tmp_path, photos):
    """Three caption records: two real photos and one 13000 x 13000 header."""
    images = tmp_path / "images"
    images.mkdir()
    photos["coffee"].save(images / "a.jpg")
    photos["rocket"].save(images / "b.jpg")
    (images / "bomb.png").write_bytes(png_header(13000, 13000))
    records = [{"id": n, "image": f"{n}.{ext}", "caption": f"picture {n}."} for n, ext in
               (("a", "jpg"), ("b", "jpg"), ("bomb", "png"))]  # fmt: skip
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(records))
    return ann, images


def run(args, capsys):
    code = cli([*args, "--workers", "1", "--no-progress"])
    return code, capsys.readouterr().err


def test_make_shards_skips_the_bomb_and_exits_1_past_the_skip_share(annotations, tmp_path, capsys):
    ann, images = annotations
    base = ["--format", "caption", "--annotations", str(ann), "--images", str(images)]
    code, err = run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "1 of 3 records (33.3%) were skipped, more than --max-skipped 0.05" in err
    report = [json.loads(line) for line in (tmp_path / "a" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in report] == [("bomb", "too_many_pixels")]  # on the header: not decoded
    assert json.loads((tmp_path / "a" / "index.json").read_text())["num_samples"] == 2  # what was written stays
    code, err = run([*base, "--out", str(tmp_path / "b"), "--max-skipped", "0.5"], capsys)
    assert (code, err) == (0, "")


@pytest.mark.parametrize(("limit", "code"), [("0.25", 0), ("0.24", 1)])
def test_make_shards_skip_share_limit_is_inclusive_and_exact(annotations, tmp_path, capsys, limit, code):
    ann, images = annotations
    records = json.loads(ann.read_text())
    (images / "c.jpg").write_bytes((images / "a.jpg").read_bytes())
    ann.write_text(json.dumps([*records, {"id": "c", "image": "c.jpg", "caption": "picture c."}]))  # 1 of 4 bad
    args = ["--format", "caption", "--annotations", str(ann), "--images", str(images), "--max-skipped", limit]
    got, err = run([*args, "--out", str(tmp_path / "out")], capsys)
    assert got == code
    assert ("1 of 4 records (25.0%) were skipped" in err) == bool(code)


def test_make_shards_exits_1_when_nothing_is_written(annotations, tmp_path, capsys):
    ann, images = annotations
    ann.write_text(json.dumps([{"id": "x", "image": "missing.jpg", "caption": "gone."}]))
    code, err = run(["--format", "caption", "--annotations", str(ann), "--images", str(images),
                     "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert code == 1 and "no sample was written (1 records read, 1 skipped)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--images": "nowhere"}, "--images {tmp}/nowhere is not a folder"),
        ({"--annotations": "none.json"}, "--annotations {tmp}/none.json is not a file"),
        ({"--out": "full"}, "--out {tmp}/full is not empty: choose a new folder, or pass --overwrite"),
    ],
)
def test_make_shards_usage_errors_exit_2_in_one_line_before_any_work(annotations, tmp_path, capsys, change, message):
    ann, images = annotations
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("the user's")
    opts = {"--annotations": str(ann), "--images": str(images), "--out": str(tmp_path / "out")}
    opts.update({k: str(tmp_path / v) for k, v in change.items()})
    code, err = run(["--format", "caption", *[x for kv in opts.items() for x in kv]], capsys)
    assert code == 2 and err.count("\n") == 1 and message.format(tmp=tmp_path) in err
    assert (tmp_path / "full" / "mine.txt").read_text() == "the user's" and not (tmp_path / "out").exists()


def demo_module(train: Path, root: Path) -> EveDataModule:
    return EveDataModule(train_shards=str(train), task="sft", synthetic={"root": str(root), "samples": 8},
                         loader={"num_workers": 0, "pin_memory": False})  # fmt: skip


def test_demo_data_is_never_generated_over_a_users_folder(tmp_path):
    root = tmp_path / "data" / "demo"
    train = root / "sft" / "train"
    train.mkdir(parents=True)
    (train / "shard-000000.tar").write_bytes(b"the user's own shard, written by another tool")
    dm = demo_module(train, root)
    with pytest.raises(
        DataSourceError,
        match=r"has no index.json, and the demo folder .* `python -m eve_lightning.data.make_shards --out",
    ):
        dm.prepare_data()
    assert (train / "shard-000000.tar").read_bytes() == b"the user's own shard, written by another tool"
    assert sorted(p.name for p in root.rglob("*")) == ["sft", "shard-000000.tar", "train"]


def test_a_folder_outside_the_demo_set_is_not_generated_and_names_make_shards(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    dm = demo_module(mine, tmp_path / "data" / "demo")
    dm.prepare_data()
    assert not (tmp_path / "data").exists()  # nothing generated anywhere
    with pytest.raises(DataSourceError, match=r"mine has no index.json: build shards there with .*make_shards"):
        dm.setup("fit")
    dm = demo_module(tmp_path / "typo", tmp_path / "data" / "demo")
    with pytest.raises(DataSourceError, match=r"typo does not exist: build shards there"):
        dm.setup("fit")


@pytest.mark.slow
def test_the_demo_set_is_generated_into_a_new_folder_and_regenerated_into_its_own(tmp_path):
    root = tmp_path / "data" / "demo"
    train = root / "sft" / "train"
    demo_module(train, root).prepare_data()
    assert (train / "index.json").is_file() and (root / synthetic_shapes.MARKER_FILE).is_file()
    (train / "index.json").unlink()  # e.g. an interrupted generation: the folder is still the generator's own
    demo_module(train, root).prepare_data()
    assert json.loads((train / "index.json").read_text())["num_samples"] == 8
