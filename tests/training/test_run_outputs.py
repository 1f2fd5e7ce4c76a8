"""What a run leaves behind: published models only when asked, last.ckpt at the final step, the run config in the
logs, small custom datasets, and the progress bar's wording."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from eve_lightning.callbacks.progress import step_description
from eve_lightning.checkpoints.safe_load import safe_load
from eve_lightning.data import make_shards
from eve_lightning.train import train
from tests.helpers.runs import FAST, compose_train

KEEP_PUBLISH = [a for a in FAST if "publish_to" not in a]  # the demo experiment's own publish targets


def run(tmp_path: Path, data_dir: Path, overrides: list[str]) -> Path:
    cfg = compose_train([*KEEP_PUBLISH, *overrides], tmp_path, data_dir, fast=False)
    train(cfg)
    return tmp_path / "run"


@pytest.mark.slow
def test_runs_publish_only_with_publish_true(tmp_path, demo_data_dir):
    latest = tmp_path / "runs" / "demo" / "latest"
    latest.mkdir(parents=True)
    (latest / "note.txt").write_text("the user's model")
    run(tmp_path, demo_data_dir, ["+stage=prealign", "trainer.max_steps=1"])  # a debug run
    assert sorted(p.name for p in latest.iterdir()) == ["note.txt"]
    assert not (tmp_path / "runs" / "demo" / "prealign").exists()

    out = run(tmp_path, demo_data_dir, ["+stage=prealign", "trainer.max_steps=1", "publish=true"])
    for folder in (tmp_path / "runs" / "demo" / "prealign", latest):
        assert json.loads((folder / "config.json").read_text()) == json.loads((out / "export/config.json").read_text())
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "export").iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes  # readable as any file the user writes


@pytest.mark.slow
def test_last_checkpoint_is_the_final_step_and_the_run_config_is_logged(tmp_path, demo_data_dir):
    # saves every 2 steps; 3 steps: Lightning alone would leave last.ckpt at step 2
    out = run(tmp_path, demo_data_dir, ["+stage=pretrain", "trainer.max_steps=3", "optim.lr=3e-4"])
    ckpts = out / "checkpoints"
    assert safe_load(ckpts / "last.ckpt")["global_step"] == 3
    assert safe_load(ckpts / "step-0000002.ckpt")["global_step"] == 2
    logged = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())
    assert logged["optim"]["lr"] == 3e-4 and logged["stage"]["name"] == "pretrain"
    assert logged["data"]["batch_size"] == 2 and logged["model"]["llm"]["config"]["hidden_size"] == 64
    assert logged["run_name"] == "demo-pretrain-local" and "hydra" not in logged


def three_sample_shards(demo_data_dir: Path, out: Path) -> Path:
    records = json.loads((demo_data_dir / "demo" / "raw" / "sft_train.json").read_text())
    ann = out.parent / "three.json"
    ann.write_text(json.dumps([r for r in records if "image" in r][:3]))
    args = ["--format", "llava", "--annotations", str(ann), "--images", str(demo_data_dir / "demo" / "raw" / "images")]
    summary = make_shards.main([*args, "--out", str(out), "--workers", "1", "--no-progress"])
    assert summary.written == 3
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "workers"), [(1, 2), (2, 4)])
def test_a_three_sample_dataset_trains(tmp_path, demo_data_dir, batch, workers):
    shards = three_sample_shards(demo_data_dir, tmp_path / "three")
    data = [f"data.train_shards={shards}", "data.val_shards=null", f"data.loader.num_workers={workers}"]
    layout = [f"data.batch_size={batch}", f"global_batch_size={batch}", "trainer.max_steps=4"]
    loss = train(compose_train(["+stage=sft", *data, *layout], tmp_path, demo_data_dir))
    assert loss is not None and loss == loss


def test_progress_bar_counts_steps_not_an_unbounded_epoch():
    trainer = SimpleNamespace(max_steps=60, max_epochs=-1, global_step=12, current_epoch=0)
    assert step_description("sft", trainer) == "sft step 12/60 · epoch 0"
    trainer = SimpleNamespace(max_steps=-1, max_epochs=3, global_step=5, current_epoch=1)
    assert step_description("prealign", trainer) == "prealign step 5 · epoch 1/3"
