"""The measured throughput table: every figure is its benchmark JSON and README row; the benchmark's token means."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eve_lightning.bench.train import draw_samples
from eve_lightning.planner import throughput as tt
from tests.helpers.repo_paths import REPO


def test_the_table_is_its_benchmark_json_and_readme():
    readme = (REPO / "benchmarks" / "README.md").read_text()
    for m in tt.MEASURED.values():
        result = json.loads((REPO / tt.RESULTS_DIR / m.json).read_text())
        ours = result["paths"]["ours"]
        assert (result["workload"], result["model"], result["card"], result["micro_batch"]) == (
            m.workload,
            m.model,
            m.card,
            m.micro_batch,
        )
        assert (ours["samples_per_s"], ours["tokens_per_s"], ours["mfu"]) == (m.samples_per_s, m.tokens_per_s, m.mfu)
        assert (result["attention"], result["rows_ours"], result["compile_teacher_ours"]) == (
            "torch_varlen",
            "balanced",
            True,
        )
        assert not result["checkpointing_ours"]
        assert f"{m.samples_per_s:.1f}" in readme and f"{m.mfu * 100:.1f} %" in readme


def test_tokens_per_sample_is_the_mean_of_the_benchmark_samples():
    rng = np.random.default_rng(0)
    for task in ("pretrain", "sft"):
        samples = draw_samples(task, 4000, rng)
        lengths = [len(s["ids"]) - 1 + (s["geom"].num_image_tokens if s["geom"] else 1) for s in samples]
        assert np.mean(lengths) == pytest.approx(tt.tokens_per_sample(task, 672), rel=0.015)
    assert tt.tokens_per_sample("pretrain", 672, square=True) == 601 + 131
    assert tt.mean_image_tokens(1344) > 3.8 * tt.mean_image_tokens(672)
