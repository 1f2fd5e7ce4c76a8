"""DeepSpeed folders are consolidated weights-only, exactly as DeepSpeed's own converter does; broken folders fail.

The folders are real: written by DeepSpeed from 2 CPU ranks (tests/helpers/zero_folders.py, one subprocess per
test run, shared by the parallel workers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from eve_lightning.checkpoints.safe_load import TornCheckpointError
from eve_lightning.checkpoints.sharded_folders import CheckpointFolderError, consolidate_deepspeed_folder
from eve_lightning.inference.loading import find_kind, load_model
from tests.helpers.ports import free_port
from tests.helpers.repo_paths import REPO

pytest.importorskip("deepspeed")


@pytest.fixture(scope="module")
def zero_folders(tmp_path_factory) -> Path:
    """The folders, written once per test run (~20 s of two DeepSpeed ranks); the tests only read them.

    Under pytest-xdist the first worker to get here writes them into the run's shared temporary folder and the
    others wait for them (a file lock), instead of each writing its own copy.
    """
    base, run = tmp_path_factory.getbasetemp(), ""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder of this run that holds every worker's own
        run = "-" + os.environ.get("PYTEST_XDIST_TESTRUNUID", "")  # never a folder of an earlier run
    out, done = base / f"zero-folders{run}", base / f"zero-folders{run}.done"
    with FileLock(f"{out}.lock"):
        if not done.is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DS_ACCELERATOR": "cpu"}
            script = REPO / "tests" / "helpers" / "zero_folders.py"
            cmd = [sys.executable, str(script), str(out), str(free_port())]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
            done.touch()
    return out


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.slow
def test_two_rank_folders_consolidate_to_deepspeeds_own_fp32_weights(zero_folders, stage):
    folder = zero_folders / f"zero{stage}"
    reference = torch.load(f"{folder}.reference.pt", weights_only=True)
    got = consolidate_deepspeed_folder(folder)
    state = got["state_dict"]
    assert sorted(state) == sorted(reference)
    assert any("embed_tokens" in k for k in state)  # the frozen part comes back too
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    assert got["global_step"] == 1 and "eve_lightning_config" in got  # Lightning's client state


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.slow
def test_load_model_reads_a_deepspeed_folder_and_writes_nothing_beside_it(zero_folders, stage):
    folder = zero_folders / f"zero{stage}"
    before = sorted(p.name for p in zero_folders.iterdir())
    loaded = load_model(folder, device="cpu")
    assert loaded.kind == "lightning_checkpoint"
    reference = torch.load(f"{folder}.reference.pt", weights_only=True)
    ours = loaded.vlm.state_dict()
    for key, value in reference.items():
        assert torch.equal(ours[key.removeprefix("model.vlm.")], value), key
    assert sorted(p.name for p in zero_folders.iterdir()) == before


@pytest.mark.slow
def test_a_folder_missing_a_rank_or_cut_short_is_torn(zero_folders, tmp_path):
    folder = shutil.copytree(zero_folders / "zero3", tmp_path / "zero3")
    (folder / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(TornCheckpointError, match="written by 2 ranks but holds 1 optimizer files"):
        consolidate_deepspeed_folder(folder)
    cut = shutil.copytree(zero_folders / "zero2", tmp_path / "zero2")
    optim = cut / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:500])
    with pytest.raises(TornCheckpointError, match="incomplete or not a torch checkpoint"):
        consolidate_deepspeed_folder(cut)


@pytest.mark.slow
def test_a_latest_file_pointing_outside_the_folder_is_refused(zero_folders, tmp_path):
    folder = shutil.copytree(zero_folders / "zero2", tmp_path / "zero2")
    (folder / "latest").write_text("../../elsewhere")
    with pytest.raises(CheckpointFolderError, match="is not a folder name"):
        consolidate_deepspeed_folder(folder)


def test_fsdp_sharded_folders_are_refused_with_the_fix(tmp_path):
    folder = tmp_path / "step.ckpt"
    folder.mkdir()
    torch.save({"epoch": 0}, folder / "meta.pt")
    (folder / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointFolderError, match="state_dict_type=full"):
        find_kind(folder)
