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
    for m in [*tt.MEASURED.values(), tt.PRETRAIN_7B_MB8]:
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
        assert result["compile_ours"]  # compiled decoder blocks ("default" mode)
        assert result["checkpointing_ours"] == m.checkpointing  # the planner's recompute depends on it
        assert f"{m.samples_per_s:.1f}" in readme and f"{m.mfu * 100:.1f} %" in readme and m.json[:-5] in readme


def test_the_7b_stages_that_train_the_decoder_take_the_7b_full_parameter_points():
    """EVE-7B's pretraining and SFT (672 px and HD) project from the 7B decoder trained whole, every block
    checkpointed, at micro-batch 32: not a 1.1B or frozen-decoder figure. EVEv2's stage 2 and SFT keep the 1.1B SFT."""
    for stage, workload in (("pretrain", "pretrain"), ("sft", "sft"), ("sft_hd", "sft")):
        m = tt.MEASURED[tt.STAGE_KIND[stage]]
        assert (m.model, m.workload, m.micro_batch, m.checkpointing) == ("eve_7b", workload, 32, True)
        assert m.json == f"2026-12-05_h200_eve_7b_{workload}_mb32_varlen_compile_balanced_checkpointed_fp8.json"
    assert tt.MEASURED[tt.STAGE_KIND["prealign"]].model == "eve_7b"  # the frozen 7B decoder, unchanged
    for stage in ("evev2_s2", "evev2_sft"):
        m = tt.MEASURED[tt.STAGE_KIND[stage]]
        assert (m.model, m.workload, m.checkpointing) == ("eve_1b", "sft", False)
    # the micro-batch 8 run, printed beside the figure used: the smaller micro-batch has the lower MFU
    assert tt.PRETRAIN_7B_MB8.mfu < tt.MEASURED["pretrain"].mfu


def test_tokens_per_sample_is_the_mean_of_the_benchmark_samples():
    rng = np.random.default_rng(0)
    for task in ("pretrain", "sft"):
        samples = draw_samples(task, 4000, rng)
        lengths = [len(s["ids"]) - 1 + (s["geom"].num_image_tokens if s["geom"] else 1) for s in samples]
        assert np.mean(lengths) == pytest.approx(tt.tokens_per_sample(task, 672), rel=0.015)
    assert tt.tokens_per_sample("pretrain", 672, square=True) == 601 + 131
    assert tt.mean_image_tokens(1344) > 3.8 * tt.mean_image_tokens(672)
