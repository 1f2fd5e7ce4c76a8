"""make_shards --family evev2 --max-side: images stored at the size EVEv2 training takes them to, never one that
would make loading end at another size; usage errors name the fix."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from eve_lightning.data.geometry import evev2_geometry
from eve_lightning.data.make_shards import cli
from eve_lightning.data.records import evev2_stored_size
from eve_lightning.data.shards import decode_sample, iter_shard


def _training_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    g = evev2_geometry(width, height, max_size, training=True)
    return g.eve.width, g.eve.height


@pytest.mark.parametrize("max_size", [800, 1600])
def test_loading_a_stored_image_ends_at_the_size_of_its_source(max_size):
    """The invariant: EVEv2's rule on the stored size gives the same training size as on the source, for every size
    (stored at the training size where that is a fixed point of the rule, else at the source's own size)."""
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(24, 6000, size=(3000, 2))]
    sizes += [(174, 4405), (4405, 174), (800, 800), (31, 31), (5000, 5000)]
    kept = 0
    for w, h in sizes:
        stored = evev2_stored_size(w, h, max_size)
        assert _training_size(*stored, max_size) == _training_size(w, h, max_size), (w, h, stored)
        kept += stored == (w, h) != _training_size(w, h, max_size)
    assert 0 < kept < len(sizes) // 5  # some elongated sizes are kept as they are, most are resized


def test_an_elongated_image_whose_training_size_is_no_fixed_point_keeps_its_own_size():
    assert _training_size(174, 4405, 800) == (160, 4032)
    assert _training_size(160, 4032, 800) == (160, 4000)  # the rule on the resized image would go further
    assert evev2_stored_size(174, 4405, 800) == (174, 4405)
    assert evev2_stored_size(2400, 1600, 800) == _training_size(2400, 1600, 800) == (992, 640)


def _build(tmp_path, photos, *extra: str) -> list[str]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    photos["coffee"].resize((2400, 1600)).save(images / "big.jpg")  # shrunk by the rule
    photos["rocket"].save(images / "small.jpg")  # 640 x 427: kept in area, sides rounded to 32 px
    photos["coffee"].resize((174, 4405)).save(images / "tall.png")  # no fixed point: stored as it is
    records = [{"id": n, "image": f"{n}.{ext}", "caption": f"picture {n}."} for n, ext in
               (("big", "jpg"), ("small", "jpg"), ("tall", "png"))]  # fmt: skip
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(records))
    args = ["--format", "caption", "--annotations", str(ann), "--images", str(images), "--out", str(tmp_path / "out")]
    return [*args, *extra, "--workers", "1", "--no-progress"]


def test_evev2_shards_store_the_training_sizes(tmp_path, photos, capsys):
    args = _build(tmp_path, photos, "--family", "evev2", "--max-side", "800")
    assert cli(args) == 0
    out = tmp_path / "out"
    samples = {decode_sample(raw).meta["id"]: decode_sample(raw) for raw in iter_shard(str(out / "shard-000000.tar"))}
    sizes = {k: Image.open(io.BytesIO(s.image)).size for k, s in samples.items()}
    assert sizes == {"big": (992, 640), "small": _training_size(640, 427, 800), "tall": (174, 4405)}
    assert sizes["small"] == (640, 416)
    index = json.loads((out / "index.json").read_text())
    assert (index["max_side"], index["max_side_family"]) == (800, "evev2")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--max-side", "800"],
            "--max-side 800: EVE v1 images are stored at 672 or 1344; for EVEv2 shards add --family",
        ),
        (["--family", "evev2", "--max-side", "810"], "--max-side 810: EVEv2 sizes are multiples of 32 px"),
    ],
)
def test_sizes_the_family_cannot_take_are_refused_in_one_line(tmp_path, photos, capsys, extra, message):
    assert cli(_build(tmp_path, photos, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
