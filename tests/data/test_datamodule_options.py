"""The DataModule's typed option groups: mappings become frozen dataclasses; unknown keys and impossible values stop
with an error naming them (in Python, and at training start-up as a one-line config error)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from eve_lightning.data import synthetic_shapes
from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.options import (
    LoaderOptions,
    OptionsError,
    PackingOptions,
    StreamOptions,
    SyntheticShapesSpec,
    as_options,
    synthetic_spec,
)
from eve_lightning.utils.config_checks import ConfigError, check_moved_keys, validate
from tests.helpers.runs import compose_train

GROUPS = [(LoaderOptions, "data.loader"), (StreamOptions, "data.stream"), (PackingOptions, "data.packing")]


def names(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def test_a_mapping_becomes_its_frozen_group_and_an_instance_passes_through():
    loader = as_options(LoaderOptions, {"num_workers": 0, "pin_memory": False})
    assert loader == LoaderOptions(num_workers=0, pin_memory=False, persistent_workers=False, prefetch_factor=2)
    assert loader.val_workers == 0 and LoaderOptions(num_workers=3, val_num_workers=1).val_workers == 1
    assert as_options(LoaderOptions, loader) is loader
    assert as_options(StreamOptions, None) == StreamOptions()  # no node: the group's defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        loader.num_workers = 4  # type: ignore[misc]


@pytest.mark.parametrize(("cls", "node"), GROUPS)
def test_an_unknown_key_is_named_with_every_option_of_its_group(cls, node):
    message = f"{node} has no option num_worker, zz_extra: its options are {names(cls)}"
    with pytest.raises(OptionsError, match=re.escape(message)):
        as_options(cls, {"num_worker": 2, "zz_extra": 1})


def test_the_datamodule_refuses_an_unknown_option_when_it_is_built(tmp_path):
    with pytest.raises(OptionsError, match=r"^data\.loader has no option pin_mem: its options are num_workers, "):
        EveDataModule(str(tmp_path), loader={"pin_mem": False})
    with pytest.raises(OptionsError, match=r"^data\.synthetic has no option demo_samples: its options are root, "):
        EveDataModule(str(tmp_path), synthetic={"root": str(tmp_path), "demo_samples": 8})


def test_the_datamodule_reads_its_groups():
    dm = EveDataModule(
        "shards",
        task="pretrain",
        loader={"num_workers": 3, "val_num_workers": None},
        stream=StreamOptions(order="global"),
        packing={"collate": "packed", "pack_length": 4096},
    )
    assert dm.loader_options.val_workers == 3 and dm.packing_options == PackingOptions("packed", 4096, 1)
    assert (dm.order, dm.resampled, dm.group) == ("global", False, False)  # global order: no task defaults
    assert dm.synthetic is None  # nothing is ever generated without a spec


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (LoaderOptions, {"num_workers": -1}, "data.loader.num_workers must be >= 0, got -1"),
        (LoaderOptions, {"prefetch_factor": 0}, "data.loader.prefetch_factor must be >= 1 or null, got 0"),
        (StreamOptions, {"order": "by_rank"}, "data.stream.order must be 'rank' or 'global', got 'by_rank'"),
        (StreamOptions, {"max_drop_rate": 1.5}, "data.stream.max_drop_rate is a share, in [0, 1]; got 1.5"),
        (StreamOptions, {"epoch_samples": 0}, "data.stream.epoch_samples must be >= 1 or null"),
        (PackingOptions, {"collate": "ragged"}, "data.packing.collate must be 'padded' or 'packed', got 'ragged'"),
        (PackingOptions, {"pad_to_multiple_of": 0}, "data.packing.pad_to_multiple_of must be >= 1, got 0"),
        (SyntheticShapesSpec, {"root": "d", "turns": "all"}, "data.synthetic.turns must be one of any, independent"),
        (
            SyntheticShapesSpec,
            {"root": "d", "answers": "long"},
            "data.synthetic.answers must be one of short, restated",
        ),
        (SyntheticShapesSpec, {"root": "d", "shuffled_captions": 2.0}, "data.synthetic.shuffled_captions is a share"),
        (SyntheticShapesSpec, {"samples": 8}, "data.synthetic needs root: set data.synthetic.root"),
    ],
)
def test_impossible_values_name_the_key_and_the_allowed_ones(cls, values, message):
    with pytest.raises(OptionsError, match=re.escape(message)):
        as_options(cls, values)


def test_the_synthetic_spec_gives_the_generator_its_parameters():
    assert synthetic_spec(None) is None
    spec = synthetic_spec({"root": "demo", "samples": 4000, "max_turns": 10, "turns": "independent"})
    params = spec.generator_params(672)
    assert (params["num_pretrain"], params["num_sft"], params["num_val"], params["max_side"]) == (4000, 4000, 200, 672)
    assert synthetic_shapes.generation_params(**params)["turns"] == "independent"  # the generator takes them as is
    assert SyntheticShapesSpec("demo", samples=100).generator_params(672)["num_val"] == 50  # at least 50 held out
    assert SyntheticShapesSpec("demo", held_out=7).generator_params(1344)["num_val"] == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+data.loader.num_worker=2", "data.loader has no option num_worker: its options are num_workers"),
        ("data.packing.collate=ragged", "data.packing.collate must be 'padded' or 'packed'"),
        ("+data.num_workers=2", "data.num_workers is no option of the data module: it is now data.loader.num_workers"),
        ("+data.bogus=1", "data.bogus is no option of the data module: the data options are accumulation, batch_size"),
    ],
)
def test_training_start_up_refuses_unknown_data_options_in_one_line(tmp_path, override, message):
    cfg = compose_train(["+stage=pretrain", override], tmp_path, tmp_path / "data")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_an_old_flat_override_names_its_new_place():
    assert check_moved_keys(["+stage=sft", "data.batch_size=8"]) is None
    assert check_moved_keys(["data.num_workers=0"]) == (
        "data.num_workers is now data.loader.num_workers: write data.loader.num_workers=0"
    )
    assert check_moved_keys(["data.demo_samples=400"]).startswith("data.demo_samples is now data.synthetic.samples")
    assert check_moved_keys(["data.collate=packed"]).startswith("data.collate is now data.packing.collate")
    assert check_moved_keys(["data.order=global"]).startswith("data.order is now data.stream.order")
