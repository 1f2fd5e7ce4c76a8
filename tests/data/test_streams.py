"""Streaming: exact SFT passes over ranks x workers, resampled pre-training epochs, drops, the DataModule."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import fields
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.make_shards import build_shards
from eve_lightning.data.options import LoaderOptions, PackingOptions, StreamOptions, SyntheticShapesSpec
from eve_lightning.data.records import BuildOptions, read_annotations
from eve_lightning.data.shards import resolve_shards
from eve_lightning.data.stream import ShardStream
from eve_lightning.utils import config_checks  # noqa: F401  (registers the resolvers conf/data uses)
from tests.helpers.streams import sft_stream

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"


def all_keys(folder: Path) -> list[str]:
    return [f"{info.url}#{k}" for info in resolve_shards(str(folder), columns=True) for k in info.keys]


def run_rank(stream: ShardStream, workers: int) -> list[dict]:
    """Batches of one rank: the simulated workers' batches (order does not matter for these checks)."""
    return [batch for w in range(workers) for batch in stream.iter_worker(w)]


@pytest.fixture(scope="module")
def uneven_sft(demo_dir, tmp_path_factory) -> Path:
    """The demo SFT records re-written as 9 shards of 7 (+4) samples."""
    out = tmp_path_factory.mktemp("uneven")
    raw = demo_dir / "raw"
    opts = BuildOptions(fmt="llava", images_dir=str(raw / "images"), max_side=672)
    build_shards(list(read_annotations(raw / "sft_train.json")), out, opts, shard_size=7)
    return out


@pytest.mark.parametrize("collate", ["padded", "packed"])
@pytest.mark.parametrize("epoch", [0, 1])
def test_exact_pass_2_ranks_x_2_workers_sees_every_sample_once(demo_dir, tok, collate, epoch):
    folder = demo_dir / "sft" / "train"
    expected = all_keys(folder)
    seen: list[str] = []
    counts = []
    for rank in range(2):
        stream = sft_stream(folder, tok, rank, 2, 2, collate=collate)
        stream.set_epoch(epoch)
        batches = run_rank(stream, 2)
        counts.append(len(batches))
        assert len(batches) == len(stream)
        for batch in batches:
            seen += batch["meta"]["keys"]
            if collate == "padded":  # grouping: every batch is all-image or all-text
                has_image = (batch["pixel_mask"].flatten(1).sum(1) > 0).tolist()
                assert len(set(has_image)) == 1
            assert batch["meta"]["stats"]["dropped"] == 0
    assert counts[0] == counts[1]
    assert len(seen) == len(set(seen)) == len(expected) and sorted(seen) == sorted(expected)


def test_exact_pass_uneven_shards_many_ranks(uneven_sft, tok):
    expected = all_keys(uneven_sft)
    assert len(resolve_shards(str(uneven_sft))) == 9
    orders = {}
    for epoch in (0, 1):
        seen, counts = [], []
        for rank in range(3):
            stream = sft_stream(uneven_sft, tok, rank, 3, 2, batch_size=5)
            stream.set_epoch(epoch)
            batches = run_rank(stream, 2)
            counts.append(len(batches))
            seen += [k for b in batches for k in b["meta"]["keys"]]
        assert len(set(counts)) == 1, counts
        assert Counter(seen) == Counter(expected)
        orders[epoch] = seen
    assert orders[0] != orders[1]  # a new epoch reshuffles


def test_real_dataloader_workers_match_the_simulation(demo_dir, tok):
    folder = demo_dir / "sft" / "train"
    dm = EveDataModule(str(folder), task="sft", batch_size=4, rank=1, world_size=2, seed=5, loader={"num_workers": 2})
    dm._tokenizer = tok
    loader = dm.train_dataloader()
    got = [k for batch in loader for k in batch["meta"]["keys"]]
    stream = dm.train_stream()
    simulated = [k for b in run_rank(stream, 2) for k in b["meta"]["keys"]]
    assert len(loader) == len(stream) and sorted(got) == sorted(simulated) and len(got) == len(set(got))


def test_resampled_epochs(demo_dir, tok):
    folder = demo_dir / "pretrain" / "train"
    streams = {}
    for rank in range(2):
        dm = EveDataModule(
            str(folder),
            task="pretrain",
            batch_size=8,
            rank=rank,
            world_size=2,
            seed=1,
            loader=LoaderOptions(num_workers=2),
            stream=StreamOptions(shuffle_buffer=16),
        )
        dm._tokenizer = tok
        streams[rank] = dm.train_stream()
    assert len(streams[0]) == len(streams[1]) == 4  # ceil(60 samples / (2 ranks x 8))
    keys = {}
    for rank, stream in streams.items():
        batches = run_rank(stream, 2)
        assert len(batches) == 4 and all(len(b["meta"]["keys"]) == 8 for b in batches)
        assert all(b["meta"]["stats"]["image_samples"] == 8 for b in batches)
        keys[rank] = [k for b in batches for k in b["meta"]["keys"]]
    assert keys[0] != keys[1]
    again = [k for b in run_rank(streams[0], 2) for k in b["meta"]["keys"]]
    assert again == keys[0]  # deterministic for a seed and epoch
    streams[0].set_epoch(1)
    assert [k for b in run_rank(streams[0], 2) for k in b["meta"]["keys"]] != keys[0]


def test_drops_are_counted_and_batch_counts_stay_equal(demo_dir, tok):
    folder = demo_dir / "sft" / "train"
    seen, dropped, fillers, counts = [], Counter(), 0, []
    for rank in range(2):
        stream = sft_stream(folder, tok, rank, 2, 2, max_length=200, group_by_modality=False, window=1)
        batches = run_rank(stream, 2)
        counts.append(len(batches))
        for b in batches:
            stats = b["meta"]["stats"]
            fillers += int(stats["filler"])
            for k, v in stats.items():
                if k.startswith("dropped_"):
                    dropped[k[8:]] += int(v)
            if not stats["filler"]:
                seen += b["meta"]["keys"]
            assert int(b["attention_mask"].sum(1).max()) <= 200
    assert counts[0] == counts[1]
    assert set(dropped) == {"image_does_not_fit"} and dropped["image_does_not_fit"] > 0
    assert fillers > 0  # batches whose images all exceeded max_length still count on their rank
    assert len(seen) + sum(dropped.values()) == 60 and len(set(seen)) == len(seen)


def data_config(name: str):
    """conf/data/<name>.yaml merged over the _base it extends, as Hydra composes it (defaults: [_base, _self_])."""
    own = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    assert list(own.pop("defaults")) == ["_base", "_self_"], name
    return OmegaConf.merge(OmegaConf.load(CONF_DATA / "_base.yaml"), own)


GROUPS = {"loader": LoaderOptions, "stream": StreamOptions, "packing": PackingOptions}


def test_data_configs_list_every_constructor_argument_once():
    params = set(inspect.signature(EveDataModule.__init__).parameters) - {"self"}
    base = OmegaConf.load(CONF_DATA / "_base.yaml")
    assert base._target_ == "eve_lightning.data.datamodule.EveDataModule"
    assert set(base.keys()) - {"_target_"} == params  # the one place that names every option
    for group, cls in GROUPS.items():  # ... and every field of every option group
        assert list(base[group]) == [f.name for f in fields(cls)], group
    assert base.synthetic is None  # real data sets generate nothing
    defaults = OmegaConf.to_container(base, resolve=False)
    for path in sorted(CONF_DATA.glob("[!_]*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert set(own) - {"defaults"} <= params, path.name  # only options, and only what differs
        for key, value in own.items():
            if key in GROUPS:
                assert set(value) <= set(defaults[key]), (path.name, key)
                assert all(value[k] != defaults[key][k] for k in value), (path.name, key)
            elif key not in ("defaults", "synthetic"):
                assert value != defaults[key], (path.name, key)
        assert set(data_config(path.stem).keys()) - {"_target_"} == params, path.name
    synthetic = OmegaConf.load(CONF_DATA / "demo.yaml").synthetic
    assert list(synthetic) == [f.name for f in fields(SyntheticShapesSpec)]  # the demo set spells out its spec


@pytest.mark.parametrize("stage", [("pretrain", "plain"), ("sft", "vicuna_v1")])
def test_demo_config_instantiates(demo_dir, tmp_path, stage):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(demo_dir)
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "stage": {"data_task": stage[0], "template": stage[1]},
            "model": {"eve": {"image_size": 672, "max_length": 2048, "align_weight": 1.0}},
            "trainer": {"accumulate_grad_batches": 1},
            "seed": 3,
            "data": data_config("demo"),
        }
    )
    cfg.data.loader.num_workers = 0
    OmegaConf.resolve(cfg)
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.synthetic == SyntheticShapesSpec(root=str(tmp_path / "data" / "demo"))
    assert (dm.task, dm.template, dm.resampled, dm.group, dm.sample_cfg.teacher_view) == (
        stage[0],
        stage[1],
        stage[0] == "pretrain",
        stage[0] == "sft",
        True,  # align_weight > 0: the teacher view is built
    )
    dm.prepare_data()  # shards exist: nothing generated
    batch = next(iter(dm.train_dataloader()))
    assert 0 < batch["input_ids"].shape[0] <= 8 and batch["teacher_pixel_values"].shape[1:] == (3, 336, 336)
    assert dm.tokenizer_source.endswith("tokenizer.model.v1")
    val = list(dm.val_dataloader())
    assert sum(len(b["meta"]["keys"]) for b in val) == 20


def test_prepare_data_generates_missing_demo(tmp_path):
    root = tmp_path / "demo"
    dm = EveDataModule(
        str(root / "sft" / "train"), str(root / "sft" / "val"), synthetic={"root": str(root), "samples": 12}
    )
    dm.prepare_data()
    assert resolve_shards(str(root / "pretrain" / "train"))[0].num_samples == 12
    assert sum(s.num_samples for s in resolve_shards(str(root / "sft" / "val"))) == 50


class _Consumer(L.LightningModule):
    """Records the sample keys of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.epochs: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.epochs.setdefault(self.current_epoch, []).extend(batch["meta"]["keys"])
        return (self.w - batch["pixel_mask"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_one_exact_pass_per_epoch(demo_dir, tok):
    dm = EveDataModule(str(demo_dir / "sft" / "train"), task="sft", batch_size=8, seed=2, loader={"num_workers": 0})
    dm._tokenizer = tok
    module = _Consumer()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    expected = sorted(all_keys(demo_dir / "sft" / "train"))
    assert sorted(module.epochs[0]) == expected == sorted(module.epochs[1])
    assert module.epochs[0] != module.epochs[1]  # the trainer's epoch reached the stream
    assert trainer.num_training_batches == len(dm.train_stream())
    assert np.isfinite(float(module.w.detach()))
