"""The DataModule refuses shards that make_shards resized below the resolution the stage trains at."""

from __future__ import annotations

import json
import shutil

import pytest

from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.shards import INDEX_FILE, DataSourceError


def _shards(demo_dir, tmp_path, **index):
    """The demo set's SFT training shards in a folder of their own, their index.json saying ``index``."""
    out = tmp_path / "shards"
    shutil.copytree(demo_dir / "sft" / "train", out)
    info = json.loads((out / INDEX_FILE).read_text())
    for key, value in index.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    (out / INDEX_FILE).write_text(json.dumps(info))
    return out


def _module(shards, **sample) -> EveDataModule:
    return EveDataModule(str(shards), task="sft", loader={"num_workers": 0, "pin_memory": False}, **sample)


def test_an_hd_stage_on_shards_resized_for_672_is_refused_with_the_fix(demo_dir, tmp_path):
    shards = _shards(demo_dir, tmp_path, max_side=672)
    with pytest.raises(DataSourceError) as err:
        _module(shards, image_size=1344).setup("fit")
    message = str(err.value)
    assert "resized for 672 px (eve), but this stage trains at 1344 px" in message
    assert "make_shards --max-side 1344 ...` (or without --max-side)" in message and "--family" not in message


def test_evev2_at_1600_on_800_px_shards_is_refused_naming_the_family(demo_dir, tmp_path):
    shards = _shards(demo_dir, tmp_path, max_side=800, max_side_family="evev2")
    with pytest.raises(DataSourceError, match=r"resized for 800 px \(evev2\).* --max-side 1600 --family evev2"):
        _module(shards, image_size=1600, family="evev2", teacher_view=False).setup("fit")


@pytest.mark.parametrize(
    ("index", "sample"),
    [
        ({"max_side": 672}, {"image_size": 672}),  # built for this stage
        ({"max_side": 1344}, {"image_size": 672}),  # larger: the loader shrinks them as it would their sources
        ({"max_side": None}, {"image_size": 1344}),  # not resized at all
    ],
)
def test_shards_at_or_above_the_stage_resolution_are_taken(demo_dir, tmp_path, index, sample):
    dm = _module(_shards(demo_dir, tmp_path, **index), **sample)
    dm.setup("fit")
    assert sum(s.num_samples for s in dm._train_shards) == 60


def test_a_generated_demo_set_is_not_checked(demo_dir, tmp_path):
    """Stored at 672 px for both families on purpose: an EVEv2 stage at 800 px still reads it; the same shards
    outside a demo set's folder are refused."""
    assert json.loads((demo_dir / "sft" / "train" / INDEX_FILE).read_text())["max_side"] == 672
    evev2 = {"image_size": 800, "family": "evev2", "teacher_view": False}
    _module(demo_dir / "sft" / "train", **evev2).setup("fit")
    with pytest.raises(DataSourceError, match="resized for 672 px"):
        _module(_shards(demo_dir, tmp_path), **evev2).setup("fit")
