"""`python -m eve_lightning.eval` end to end on the demo benchmark with a tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test runs the eval CLI in a fresh process


def run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "eve_lightning.eval", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_demo_benchmark_end_to_end_with_limit_then_resume(eval_export, demo_root, tmp_path):
    out = tmp_path / "eval-out"
    common = [f"model={eval_export}", f"data.root={demo_root}", f"output_dir={out}", "max_new_tokens=4"]
    first = run([*common, "limit=5", "batch_size=4", "progress=false"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    line = json.loads(first.stdout.strip().splitlines()[-1])  # the metrics: the last line of stdout
    assert line["benchmark"] == "demo" and line["counts"]["asked"] == 5
    assert "accuracy" in line["metrics"]
    assert len((out / "answers.jsonl").read_text().splitlines()) == 5

    second = run([*common, "batch_size=8"], tmp_path)  # the whole benchmark: the first 5 are not asked again
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 5 of" in second.stderr
    metrics = json.loads(second.stdout.strip().splitlines()[-1])
    n = metrics["counts"]["asked"]
    assert metrics["counts"]["answered"] == n and metrics["counts"]["captions"] == 4
    assert {"accuracy", "accuracy_colour", "accuracy_shape", "caption_accuracy"} <= set(metrics["metrics"])
    records = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(records) == n == len({r["question_id"] for r in records})
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == metrics["metrics"] and results["model"] == str(eval_export)
    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()

    third = run(common, tmp_path)  # everything answered: scores again without loading the model
    assert third.returncode == 0 and "scoring only" in third.stderr
    assert json.loads(third.stdout.strip().splitlines()[-1])["metrics"] == metrics["metrics"]

    changed = run([*common, "max_new_tokens=5"], tmp_path)
    assert changed.returncode == 2 and "different max_new_tokens" in changed.stderr


def test_without_a_trained_demo_model_it_says_what_to_do(tmp_path):
    proc = run([], tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "run `make train` first, or pass model=DIR" in err[0]
    assert err[0].startswith("eve_lightning.eval: error: model ")


def test_missing_benchmark_files_are_one_line_errors(eval_export, tmp_path):
    proc = run([f"model={eval_export}", "benchmark=pope", f"data.root={tmp_path / 'nothing'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "coco_pope_adversarial.json not found" in proc.stderr and "docs/evaluation.md" in proc.stderr
