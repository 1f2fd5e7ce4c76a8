"""Corrupt samples in shards: skipped without sleeping, counted and reported; too many stop the run clearly."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from eve_lightning.bench.corrupt import corrupt_shard_copy
from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.stream import DropRateError
from eve_lightning.train import build
from tests.helpers.runs import compose_train

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def sft_200(tmp_path_factory):
    from eve_lightning.data import synthetic_shapes

    root = tmp_path_factory.mktemp("data200")
    synthetic_shapes.generate(root / "demo", num_pretrain=8, num_sft=200, num_val=8, seed=1, max_side=672, workers=1)
    return root


corrupt_copy = corrupt_shard_copy


@pytest.mark.slow
def test_one_percent_corrupt_images_are_skipped_counted_and_never_slept_on(sft_200, tmp_path, monkeypatch):
    shards = tmp_path / "sft"
    corrupted = corrupt_copy(sft_200 / "demo" / "sft" / "train", shards, 0.01)
    assert len(corrupted) == 2

    def no_sleep(_):
        raise AssertionError("the data path slept")

    monkeypatch.setattr(time, "sleep", no_sleep)  # inherited by the forked loader workers
    dm = EveDataModule(
        train_shards=str(shards), task="sft", batch_size=4, loader={"num_workers": 2, "pin_memory": False}
    )
    batches = list(dm.train_dataloader())
    keys = [k for b in batches for k in b["meta"]["keys"] if k != "<filler>"]
    dropped = sum(b["meta"]["stats"].get("dropped_bad_image", 0) for b in batches)
    assert dropped == 2
    assert len(keys) == len(set(keys)) == 200 - 2
    assert not any(k.rsplit("#", 1)[1] in {c.rsplit("/", 1)[-1] for c in corrupted} for k in keys)


@pytest.mark.slow
def test_the_training_run_completes_and_reports_the_drops(sft_200, tmp_path):
    corrupt_copy(sft_200 / "demo" / "sft" / "train", tmp_path / "data" / "demo" / "sft" / "train", 0.01)
    cfg = compose_train(
        [
            "+stage=sft",
            "+trainer.max_epochs=1",
            "trainer.max_steps=100",
            "global_batch_size=8",
            "data.batch_size=8",
            "data.val_shards=null",
        ],
        tmp_path,
        tmp_path / "data",
    )
    run = build(cfg)
    run.trainer.fit(run.module, datamodule=run.data_module)
    planned = len(run.data_module.train_stream())  # one exact pass of the 200 samples, modality-grouped
    assert 25 <= planned <= 27 and run.trainer.global_step == planned
    metrics = csv.DictReader(open(next(Path(cfg.paths.output_dir).rglob("metrics.csv"))))
    per_step = [float(row["data/dropped"]) for row in metrics if row.get("data/dropped")]
    assert len(per_step) == planned and sum(per_step) == 2  # the 2 corrupt samples, each counted once


def test_mostly_corrupt_shards_stop_the_run_with_a_clear_message(sft_200, tmp_path):
    shards = tmp_path / "sft"
    corrupt_copy(sft_200 / "demo" / "sft" / "train", shards, 0.3)
    dm = EveDataModule(
        train_shards=str(shards), task="sft", batch_size=4, loader={"num_workers": 0, "pin_memory": False}
    )
    with pytest.raises(
        DropRateError, match=r"were dropped \(\{'bad_image': \d+\}\), more than data.stream.max_drop_rate=10.0%"
    ):
        list(dm.train_dataloader())
