"""experiments/multi_gpu/run.py, dry run on two CPU processes: it runs the checks and reports them as it should."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers.repo_paths import REPO


@pytest.mark.slow
def test_the_dry_run_compares_two_ranks_with_one_and_reports_the_frozen_decoder(tmp_path, demo_data_dir):
    spec = importlib.util.spec_from_file_location("multi_gpu_run", REPO / "experiments" / "multi_gpu" / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--cpu", "--root", str(tmp_path), "--parts", "losses,prealign", "--steps", "2", "--global-batch", "4"]
    (tmp_path / "data").symlink_to(demo_data_dir)  # paths.data_dir is <root>/data
    summary = script.main(args)
    runs = summary["runs"]
    assert runs["pretrain_2gpu_ddp"]["steps"] == runs["pretrain_1gpu"]["steps"] == 2
    assert runs["pretrain_2gpu_ddp"]["loss_vs_1gpu"]["max_rel_diff"] < 1e-5
    change = runs["prealign_2gpu_ddp"]["max_abs_change_by_part"]
    assert change["llm"] == 0.0 and min(change[p] for p in ("patch_embed", "projector", "aligner")) > 0
    written = json.loads((tmp_path / "results" / "runs" / "pretrain_2gpu_ddp.json").read_text())
    assert {"card", "n_gpus", "strategy", "samples_per_s", "peak_mem_gib_rank0", "loss_vs_1gpu"} <= set(written)
