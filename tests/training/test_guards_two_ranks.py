"""The non-finite guards on 2 CPU ranks (gloo): a NaN on one rank only still skips the step on both.

A rank that skipped alone would leave the other waiting in the gradient all-reduce (a hang) or let the weights
drift apart; both ranks must skip, go on, and end with the same finite weights.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from eve_lightning.train import build
from tests.helpers.runs import FAST, compose_train, run_cli

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_non_finite_step_on_one_rank_is_skipped_on_both(tmp_path, demo_data_dir, where):
    args = [
        "+stage=pretrain", *FAST, f"paths.data_dir={demo_data_dir}", "trainer.devices=2", "strategy=ddp",
        "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=100",
        "security.extra_targets=[tests.helpers.nan_inject.NanAt,tests.helpers.nan_inject.RankReport]",
        "+callbacks.nan._target_=tests.helpers.nan_inject.NanAt", "+callbacks.nan.steps=[1]",
        "+callbacks.nan.ranks=[1]", f"+callbacks.nan.where={where}",
        "+callbacks.report._target_=tests.helpers.nan_inject.RankReport",
    ]  # fmt: skip
    os.environ["RANK_REPORT"] = str(tmp_path / "report")
    try:
        proc = run_cli(args, tmp_path, timeout=400)
    finally:
        del os.environ["RANK_REPORT"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    what = "loss on another rank" if where == "loss" else "gradient norm on another rank"
    assert f"step 1 skipped: non-finite {what}" in proc.stdout + proc.stderr  # rank 0 logs; the NaN was rank 1's
    reports = [json.loads((tmp_path / f"report.{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in reports] == [4, 4]
    assert [r["skipped_steps"] for r in reports] == [1, 1]  # the clean rank skipped too
    assert all(r["finite"] for r in reports)
    assert reports[0]["checksum"] == reports[1]["checksum"]  # still the same weights on both ranks


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, demo_data_dir):
    cfg = compose_train(["+stage=pretrain", "trainer.max_steps=2"], tmp_path, demo_data_dir)
    run = build(cfg)
    run.trainer.fit(run.module, datamodule=run.data_module)
    with torch.no_grad():
        run.module.model.vlm.projector.fc1.weight[0, 0] = float("nan")
    path = tmp_path / "nan.ckpt"
    with pytest.raises(RuntimeError, match=r"refusing to write a checkpoint with non-finite weights: \['model.vlm"):
        run.trainer.save_checkpoint(path)
    assert not path.exists() and not path.with_name("nan.ckpt.tmp").exists()
