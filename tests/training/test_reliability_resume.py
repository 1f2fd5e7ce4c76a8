"""Exact resume: the data stream restarts where the checkpoint left it, also after kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.options import LoaderOptions, StreamOptions
from tests.helpers.runs import FAST, child_pythonpath

pytestmark = pytest.mark.reliability


def keys_of(loader):
    return [tuple(b["meta"]["keys"]) for b in loader]


@pytest.mark.parametrize("task", ["pretrain", "sft"])
def test_skipping_k_batches_yields_exactly_the_rest_of_the_pass(demo_data_dir, task):
    dm = EveDataModule(
        train_shards=str(demo_data_dir / "demo" / task / "train"),
        task=task,
        batch_size=3,
        loader=LoaderOptions(num_workers=2, pin_memory=False),
        stream=StreamOptions(epoch_samples=40),
    )
    full = keys_of(dm.train_dataloader())
    assert len(full) >= 8
    for k in (1, 4, len(full) - 1):
        dm.load_state_dict({"epoch": 0, "batches": k})
        assert keys_of(dm.train_dataloader()) == full[k:], k
    # a resume state of another epoch skips nothing
    dm.load_state_dict({"epoch": 3, "batches": 2})
    assert keys_of(dm.train_dataloader()) == full


def index_keys(folder: Path) -> list[str]:
    """Every sample of a shard folder, as `<shard path>#<key>`, read from its index and sidecar files."""
    index = json.loads((folder / "index.json").read_text())
    keys = []
    for shard in index["shards"]:
        side = json.loads((folder / shard["sidecar"]).read_text())
        assert len(side["keys"]) == shard["num_samples"]
        keys += [f"{folder / shard['file']}#{k}" for k in side["keys"]]
    assert len(keys) == index["num_samples"]
    return keys


def test_sft_epoch_interrupted_twice_sees_every_sample_of_the_index_exactly_once(demo_data_dir):
    folder = demo_data_dir / "demo" / "sft" / "train"
    dm = EveDataModule(
        train_shards=str(folder), task="sft", batch_size=2, loader={"num_workers": 2, "pin_memory": False}
    )
    batches = len(dm.train_stream())
    seen, done = [], 0
    for stop in (3, 7, batches):  # two interruptions, each resumed from the batches already trained on
        dm.load_state_dict({"epoch": 0, "batches": done})
        seen += keys_of(dm.train_dataloader())[: stop - done]
        done = stop
    flat = [k for batch in seen for k in batch if k != "<filler>"]
    expected = index_keys(folder)
    assert len(expected) == 48
    assert sorted(flat) == sorted(expected)  # every key of the index, none twice, none missing


def run_logged(args, cwd, log_file, kill_after_step=None):
    """Train in a subprocess that logs each step's sample keys and loss; optionally kill -9 it after a step."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "STEP_LOG": str(log_file)}
    env["PYTHONPATH"] = child_pythonpath(env)
    cmd = [
        sys.executable,
        "-m",
        "eve_lightning.train",
        *args,
        "+callbacks.steplog._target_=tests.helpers.step_log.StepLog",
    ]
    cmd.append("security.extra_targets=[tests.helpers.step_log.StepLog]")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_after_step is None:
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
        return
    deadline = time.time() + 300
    while time.time() < deadline:
        if log_file.exists() and any(
            json.loads(line)["step"] >= kill_after_step for line in log_file.read_text().splitlines()
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def read_log(path):
    return {json.loads(line)["step"]: json.loads(line) for line in path.read_text().splitlines()}


@pytest.mark.slow
def test_kill9_then_resume_from_last_matches_an_uninterrupted_run(tmp_path, demo_data_dir):
    common = [
        "+stage=pretrain",
        *FAST,
        f"paths.data_dir={demo_data_dir}",
        "data.loader.num_workers=2",
        "global_batch_size=2",  # one batch per optimizer step
        "trainer.max_steps=10",
        "trainer.val_check_interval=1000",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "data.stream.epoch_samples=64",
    ]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    run_logged(common, ref_dir, ref_dir / "steps.jsonl")
    ref = read_log(ref_dir / "steps.jsonl")
    assert sorted(ref) == list(range(10))

    kill_at = random.Random(4242).randint(4, 8)  # a seeded step after the first checkpoint (step 3)
    run_logged(common, cut_dir, cut_dir / "steps.jsonl", kill_after_step=kill_at)
    killed = read_log(cut_dir / "steps.jsonl")
    assert max(killed) < 9, "the run finished before the kill"
    assert list((cut_dir / "logs").rglob("last.ckpt")), "no checkpoint before the kill"
    run_logged([*common, "ckpt_path=last"], cut_dir, cut_dir / "resumed.jsonl")
    resumed = read_log(cut_dir / "resumed.jsonl")
    start = min(resumed)
    assert start in (3, 6) and start <= max(killed) + 1 and max(resumed) == 9  # from the last checkpoint, not 0
    for step in range(start, 10):
        assert resumed[step]["keys"] == ref[step]["keys"], step
        assert resumed[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-6), step


def test_global_order_resumes_at_the_same_step_when_the_accumulation_changes(demo_data_dir):
    def module(batch_size, accumulation):
        return EveDataModule(
            train_shards=str(demo_data_dir / "demo" / "pretrain" / "train"), task="pretrain",
            batch_size=batch_size, accumulation=accumulation, stream={"order": "global"},
            loader={"num_workers": 2, "pin_memory": False},
        )  # fmt: skip

    def steps(dm, accumulation):
        flat = keys_of(dm.train_dataloader())
        return [sorted(k for b in flat[i : i + accumulation] for k in b) for i in range(0, len(flat), accumulation)]

    one = steps(module(4, 1), 1)  # micro-batch 4, one micro-batch per step
    assert len(one) >= 6
    resumed = module(2, 2)  # micro-batch 2, two per step: the state was saved after 3 steps of the first layout
    resumed.load_state_dict({"epoch": 0, "batches": 3, "accumulation": 1})
    assert steps(resumed, 2) == one[3:]
