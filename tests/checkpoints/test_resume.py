"""`ckpt_path=last` resumes from the newest complete checkpoint, and a save killed half-way never tears one.

The kill test is real: a subprocess writes checkpoints through `AtomicCheckpointIO` and is killed with SIGKILL
while a write is under way (the partial temporary file is on disk), at a seeded save.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eve_lightning.checkpoints.safe_load import TornCheckpointError, safe_load
from eve_lightning.utils.config_checks import ConfigError, resolve_ckpt_path
from tests.helpers.repo_paths import REPO
from tests.helpers.runs import compose_train

pytestmark = pytest.mark.reliability


def stage_checkpoints(cfg, run: str = "2026-01-01_00-00-00_local") -> Path:
    return Path(cfg.paths.log_dir) / cfg.task_name / cfg.experiment_name / cfg.stage.name / run / "checkpoints"


def save_at(path: Path, step: int, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.full((4,), float(step))}}, path)
    os.utime(path, (mtime, mtime))


def test_a_torn_last_checkpoint_falls_back_to_the_newest_complete_one(tmp_path, demo_data_dir, caplog):
    cfg = compose_train(["+stage=pretrain", "ckpt_path=last"], tmp_path, demo_data_dir)
    ckpts = stage_checkpoints(cfg)
    now = time.time()
    save_at(ckpts / "step-0000002.ckpt", 2, now - 30)
    save_at(ckpts / "step-0000004.ckpt", 4, now - 20)
    save_at(ckpts / "last.ckpt", 4, now - 10)
    assert resolve_ckpt_path(cfg) == str(ckpts / "last.ckpt")  # complete: taken as it is
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy or a disk cut off half-way
    with caplog.at_level(logging.WARNING):
        chosen = resolve_ckpt_path(cfg)
    assert chosen == str(ckpts / "step-0000004.ckpt")
    assert safe_load(chosen)["global_step"] == 4
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint {last} is incomplete" in said and "resuming from" in said and "step-0000004" in said


def test_every_checkpoint_torn_is_an_error_naming_the_fix(tmp_path, demo_data_dir):
    cfg = compose_train(["+stage=pretrain", "ckpt_path=last"], tmp_path, demo_data_dir)
    (stage_checkpoints(cfg)).mkdir(parents=True)
    (stage_checkpoints(cfg) / "last.ckpt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ConfigError, match=r"every checkpoint in .* is incomplete: start the stage anew"):
        resolve_ckpt_path(cfg)


def test_an_explicit_torn_checkpoint_is_refused_in_one_line(tmp_path, demo_data_dir):
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(b"not a checkpoint")
    cfg = compose_train(["+stage=pretrain", f"ckpt_path={torn}"], tmp_path, demo_data_dir)
    with pytest.raises(ConfigError, match=r"ckpt_path: .*torn.ckpt is incomplete or not a torch checkpoint") as err:
        resolve_ckpt_path(cfg)
    assert "\n" not in str(err.value)


WRITER = """
import sys, torch
from eve_lightning.lit.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
payload = torch.randn(12_000_000)  # 48 MB: a save takes 70-190 ms here, long enough to be cut off half-way
for version in range(1000):
    print("begin", version, flush=True)
    io.save_checkpoint({"version": version, "payload": payload}, path)
"""


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_whole(tmp_path):
    rng = random.Random(20261204)  # seeded: the same save, cut off after the same delay, every run
    kill_during, delay = rng.randint(2, 5), rng.uniform(0.005, 0.025)
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        while (line := proc.stdout.readline()) != f"begin {kill_during}\n":
            assert line, "the writer exited early"
        time.sleep(delay)  # save `kill_during` is under way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    state = safe_load(path)  # the checkpoint is whole: the last complete save, not the torn one
    assert state["version"] == kill_during - 1, "the kill landed after the save had finished"
    assert state["payload"].numel() == 12_000_000
    with pytest.raises(TornCheckpointError):
        safe_load(path.with_name("last.ckpt.tmp"))  # what was being written is torn, beside it
