"""EVEv2 preprocessing: the resize rule, canvases sized per batch, token counts equal to the model's, the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eve_lightning.constants import BACKGROUND_RGB, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.collate import PackedCollator, PaddedCollator, ProcessedSample, canvas_size
from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.geometry import GridGeometry, evev2_geometry, image_token_count, max_image_tokens
from eve_lightning.data.image import evev2_view, prepare_image_evev2
from eve_lightning.data.stream import SampleConfig
from eve_lightning.geometry import band_token_count
from eve_lightning.models.evev2 import EveV2PatchEmbedding

BG = np.array(BACKGROUND_RGB, dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "max_size", "training", "band"),
    [
        # training: shrink to area max_size^2 only when larger, then round each side to the nearest 32 px
        ((2000, 1000), 800, True, (1120, 576)),  # s = 1.768: 1131.4 x 565.7 px -> 35 x 18 cells
        ((640, 480), 800, True, (640, 480)),  # smaller than 800^2: kept (20 x 15 cells)
        ((100, 50), 800, True, (96, 64)),  # 3.125 -> 3 cells, 1.5625 -> 2 cells
        ((10, 10), 800, True, (32, 32)),  # at least one cell per side
        ((1000, 1000), 800, True, (800, 800)),  # square: exactly max_size
        ((4000, 1000), 800, True, (1600, 384)),  # 4:1 -> 50 x 12.5 cells, 12.5 rounds to even: 12
        ((4000, 3000), 1600, True, (1856, 1376)),  # s = 2.165: 1847.5 x 1385.6 -> 58 x 43 cells
        # inference: scale to area max_size^2 up or down, round each side up
        ((640, 480), 800, False, (928, 704)),  # 923.8 x 692.8 -> 29 x 22 cells
        ((100, 50), 800, False, (1152, 576)),  # 1131.4 x 565.7 -> 36 x 18 cells
        ((2000, 1000), 1600, False, (2272, 1152)),  # 2262.7 x 1131.4 -> 71 x 36 cells
    ],
)
def test_resize_rule_of_the_original(size, max_size, training, band):
    geom = evev2_geometry(*size, max_size, training=training)
    assert (geom.width, geom.height) == band
    assert geom.num_image_tokens == band_token_count(band[1] // 32, band[0] // 32)
    assert geom.eve.x0 == geom.eve.y0 == 0  # the band sits at the top-left


def test_token_counts_of_the_recipe_resolutions():
    assert evev2_geometry(2000, 1000, 800).num_image_tokens == 1 + 18 * 36 == 649
    assert max_image_tokens(800, "evev2") == image_token_count(25, 25) == 651
    assert max_image_tokens(1600, "evev2") == image_token_count(50, 50) == 2551
    assert max_image_tokens(672) == 601 and max_image_tokens(1344) == 2353  # EVE v1 unchanged
    with pytest.raises(ValueError, match="model family must be one of"):
        max_image_tokens(800, "eve3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size must be a positive multiple of 32"):
        evev2_geometry(10, 10, 810)


def test_prepared_band_and_single_view(photos):
    prep = prepare_image_evev2(photos["coffee"], 800)  # 600 x 400: kept, rounded to 608 x 384 (19 x 12.5 -> 12)
    assert isinstance(prep.geometry, GridGeometry) and prep.teacher_band is None
    assert prep.eve_band.shape == (384, 608, 3) and prep.eve_band.dtype == np.uint8
    expected = np.asarray(photos["coffee"].resize((608, 384), Image.Resampling.BICUBIC))
    assert np.array_equal(prep.eve_band, expected)  # bicubic, as the original's Image.resize
    pixels, mask = evev2_view(photos["coffee"], 800)  # inference rule: scaled up to ~800^2
    assert pixels.shape == (3, 672, 992) and mask.all()  # 979.8 x 653.2 -> 31 x 21 cells, no padding
    pixels, mask = evev2_view(photos["coffee"], 800, square=True)
    assert pixels.shape == (3, 992, 992) and mask[:672].all() and not mask[672:].any()
    assert (pixels[:, 672:] == BG[:, None, None]).all()


def sample(photo, ids_len: int = 5, key: str = "s") -> ProcessedSample:
    prep = prepare_image_evev2(photo, 800) if photo is not None else None
    ids = np.arange(3, 3 + ids_len, dtype=np.int64)
    labels = ids.copy()
    pos = -1
    if prep is not None:
        pos, ids[1], labels[1] = 1, IMAGE_TOKEN_INDEX, IGNORE_INDEX
    tokens = prep.geometry.num_image_tokens if prep is not None else 0
    return ProcessedSample(key, ids, labels, pos, prep, tokens)


@pytest.mark.parametrize("canvas", ["square", "rect"])
def test_canvases_are_sized_per_batch_with_bands_at_the_top_left(photos, canvas):
    samples = [sample(photos[n]) if n else sample(None) for n in ("coffee", None, "chelsea_portrait", "rocket_wide")]
    batch = PaddedCollator(pad_id=0, image_size=800, canvas=canvas)(samples)
    # bands (w x h): coffee 608 x 384, portrait 288 x 448 (9 x 14 cells), wide 640 x 160
    want = (640, 640) if canvas == "square" else (448, 640)
    assert batch["pixel_values"].shape == (4, 3, *want) and batch["pixel_mask"].shape == (4, *want)
    for i, s in enumerate(samples):
        mask = batch["pixel_mask"][i].numpy()
        pixels = batch["pixel_values"][i].numpy()
        if s.image is None:
            assert mask.sum() == 0 and (pixels == BG[:, None, None]).all()
            continue
        h, w = s.image.eve_band.shape[:2]
        assert mask[:h, :w].all() and mask.sum() == h * w
        assert np.array_equal(pixels[:, :h, :w], s.image.eve_band.transpose(2, 0, 1))
        assert (pixels[:, h:] == BG[:, None, None]).all() and (pixels[:, :, w:] == BG[:, None, None]).all()
    packed = PackedCollator(pad_id=0, image_size=800, pack_length=4096, canvas=canvas)(samples)
    assert packed["pixel_values"].shape == (3, 3, *want)  # one canvas per image
    assert canvas_size([None], canvas, 800) == (32, 32)  # no image: one cell


def test_token_counts_equal_the_models(photos):
    """The data side's count of every image equals the tokens the EVEv2 patch embedding makes of the batch."""
    samples = [sample(photos[n]) for n in ("coffee", "chelsea_portrait", "rocket_wide", "astronaut", "camera")]
    batch = PaddedCollator(pad_id=0, image_size=800, canvas="square")(samples)
    embed = EveV2PatchEmbedding(vision_hidden=8, llm_hidden=16)
    with torch.no_grad():
        out = embed(batch["pixel_values"], batch["pixel_mask"])
    assert out.lengths.tolist() == [s.num_image_tokens for s in samples]
    grids = [(s.image.geometry.grid_h, s.image.geometry.grid_w) for s in samples]
    assert out.grids[:, 2:].tolist() == [list(g) for g in grids]
    assert out.grids[:, :2].eq(0).all()  # every band at the top-left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "evev2", "teacher_view": True}, "EVEv2 has no CLIP teacher: set data.teacher_view=false"),
        ({"family": "evev2", "teacher_view": False, "canvas": "fixed"}, "EVEv2 canvases are sized per batch"),
        ({"family": "eve", "canvas": "rect"}, "EVE v1 images go on the fixed 800-px canvas"),
        ({"family": "eve2"}, "data.family must be one of"),
    ],
)
def test_sample_config_refuses_what_the_family_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleConfig("qwen2", 800, 2048, **kwargs)
    assert SampleConfig("qwen2", 800, 2048, teacher_view=False, family="evev2").canvas == "square"
    assert SampleConfig("plain", 672, 2048).canvas == "fixed"


@pytest.mark.parametrize(("task", "template"), [("pretrain", "qwen2_plain"), ("sft", "qwen2")])
def test_the_datamodule_streams_evev2_batches(demo_dir, tok, task, template):
    dm = EveDataModule(
        str(demo_dir / task / "train"),
        task=task,
        template=template,
        image_size=800,
        teacher_view=False,
        family="evev2",
        batch_size=4,
        loader={"num_workers": 0, "pin_memory": False},
    )
    assert dm.demo_max_side == 672  # EVEv2 reads the EVE v1 demo set
    batch = next(iter(dm.train_dataloader()))
    assert "teacher_pixel_values" not in batch
    n, _, height, width = batch["pixel_values"].shape
    assert n == batch["input_ids"].shape[0] and height == width and height % 32 == 0
    rows = (batch["input_ids"] == IMAGE_TOKEN_INDEX).any(1)
    assert batch["pixel_mask"][~rows].sum() == 0 and (batch["pixel_mask"][rows].flatten(1).sum(1) > 0).all()
    cells = batch["pixel_mask"][rows].float().unfold(1, 32, 32).unfold(2, 32, 32).mean((-1, -2))
    assert ((cells == 0) | (cells == 1)).all()  # whole 32 px cells
