"""experiments/demo_recipe/summarize.py: what results.json records, and the committed results of the recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.repo_paths import REPO

RECIPE = REPO / "experiments" / "demo_recipe"
HEADER = "step,train/loss,train/loss_ce,train/loss_align,val/loss_ce,perf/peak_mem_gib\n"


def write_stage(folder: Path, stage: str, losses: list[float], seconds: int) -> None:
    rows = [f"{9 + 10 * i},{v},{v - 0.01},0.01,,12.5\n" for i, v in enumerate(losses)]
    rows.append(f"{10 * len(losses) - 1},,,,0.25,\n")  # a validation row: the steps done
    (folder / f"{stage}.metrics.csv").write_text(HEADER + "".join(rows))
    (folder / f"{stage}.seconds").write_text(f"{seconds}\n")


def test_summary_records_times_losses_and_heldout_fractions(tmp_path: Path) -> None:
    results = tmp_path / "results"
    full = results / "full"
    full.mkdir(parents=True)
    (results / "card.txt").write_text("NVIDIA H200\n")
    (results / "data.seconds").write_text("158\n")
    (results / "generation.json").write_text(json.dumps({"num_sft": 153600, "answers": "restated"}))
    write_stage(full, "pretrain", [6.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], seconds=64)
    metrics = {"accuracy": 96.1, "accuracy_colour_shape": 93.05, "caption_accuracy": 100.0}
    (full / "eval.json").write_text("log line\n" + json.dumps({"metrics": metrics, "counts": {"questions": 872}}))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(RECIPE / "summarize.py"), "--results", str(results), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "results.json").read_text())

    assert summary["card"] == "NVIDIA H200"
    assert summary["data_wall_s"] == 158
    assert summary["data_generation"]["answers"] == "restated"
    pretrain = summary["stages"]["pretrain"]
    assert pretrain["steps"] == 70  # the validation row after step index 69
    assert pretrain["first_loss"] == 6.0
    assert pretrain["final_loss"] == 0.3  # mean of the last 5 logged losses: 0.5 .. 0.1
    assert pretrain["final_val_loss_ce"] == 0.25
    assert pretrain["samples_per_wall_s"] == 70 * 64 / 64
    assert summary["heldout"]["color_shape_exact_match"] == 0.9305
    assert summary["heldout"]["overall_exact_match"] == 0.961
    assert summary["heldout"]["caption_correct"] == 1.0
    assert summary["ablations"] == {}


def test_committed_results_show_the_targets_and_both_ablations() -> None:
    summary = json.loads((RECIPE / "results.json").read_text())
    assert summary["card"]
    for stage in ("prealign", "pretrain", "sft"):
        record = summary["stages"][stage]
        assert record["steps"] == record["scheduled_steps"]
        assert record["wall_s"] > 0 and record["final_loss"] is not None
    held = summary["heldout"]
    assert held["questions"] >= 500
    assert held["color_shape_exact_match"] >= 0.90
    assert held["overall_exact_match"] >= 0.70
    assert held["caption_correct"] >= 0.80
    assert set(summary["ablations"]) == {"no_prealign", "no_align"}
    for variant in summary["ablations"].values():
        assert variant["heldout"]["questions"] == held["questions"]
    for stage in ("prealign", "pretrain", "sft"):
        assert (RECIPE / f"loss_{stage}.png").stat().st_size > 10_000
