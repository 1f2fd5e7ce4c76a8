"""The measured throughput table: every figure is its benchmark JSON and README row, its MFU re-derived with the LM
head counted at the supervised positions; the benchmark's token means."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eve_lightning.bench.train import draw_samples, sample_tokens, supervised_count
from eve_lightning.models.shapes import DECODERS, EVEV2_DECODERS
from eve_lightning.planner import throughput as tt
from eve_lightning.utils.flops import samples_flops
from tests.helpers.repo_paths import REPO

# The runs benchmarks/README.md lists with their MFU re-derived ("Results so far"): JSON -> the paths listed
HEADLINES = {
    "2026-12-05_h200_eve_1b_pretrain_mb64_varlen_compile_balanced_fp8.json": ("ours", "ours_fp8"),
    "2026-12-05_h200_eve_1b_sft_mb32_varlen_compile_balanced.json": ("ours", "reference"),
    "2026-12-05_h200_eve_7b_prealign_mb24_varlen_compile_balanced_fp8.json": ("ours", "ours_fp8"),
    "2026-12-05_h200_eve_7b_prealign_mb40_varlen_compile_balanced_fp8.json": ("ours", "ours_fp8"),
    "2026-12-05_h200_eve_7b_pretrain_mb32_varlen_compile_balanced_checkpointed_fp8.json": ("ours", "ours_fp8"),
    "2026-12-05_h200_eve_7b_sft_mb32_varlen_compile_balanced_checkpointed_fp8.json": ("ours", "ours_fp8"),
    "2026-12-05_h200_evev2_1b_pretrain_mb16_varlen_compile_balanced_routed_vs_dense.json": ("ours", "dense"),
}


def decoder_split(model: str) -> tuple[int, int, int, int]:
    """(parameters without the input embedding and the LM head, the LM head's, layers, width) of a benchmark model,
    by arithmetic on its published shape: Llama blocks (EVE v1) or Qwen2 blocks with q/k/v biases (EVEv2, one
    branch: the vision copies are not counted)."""
    cfg = dict(DECODERS[model], vocab_size=32000) if model in DECODERS else EVEV2_DECODERS[model]
    width, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = width // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    bias = width + 2 * kv if model in EVEV2_DECODERS else 0
    block = 2 * width * width + 2 * width * kv + 3 * width * inter + 2 * width + bias  # q, o, k, v, MLP, 2 norms
    return layers * block + width, cfg["vocab_size"] * width, layers, width  # + the final norm


def rederive(result: dict) -> tuple[float, float, float]:
    """Regenerate a run's samples as ``bench.train.run`` draws them; (mean tokens per sample, the mean step FLOPs
    with the LM head at every token, the same with the head at the supervised positions)."""
    family = "evev2" if result["model"] in EVEV2_DECODERS else "eve"
    rng = np.random.default_rng(0)
    mb = result["micro_batch"]
    draws = [draw_samples(result["workload"], mb, rng, family, result.get("image_size", 800)) for _ in range(4)]
    lengths = [[sample_tokens(s) for s in d] for d in draws]
    supervised = [[supervised_count(s) for s in d] for d in draws]
    body, head, layers, width = decoder_split(result["model"])
    trained = result["workload"] != "prealign"
    every = np.mean([samples_flops(body + head, layers, width, ln, trained) for ln in lengths])
    useful = np.mean([samples_flops(body, layers, width, ln, trained, head, s) for ln, s in zip(lengths, supervised)])
    return float(np.mean([sum(ln) for ln in lengths])) / mb, float(every), float(useful)


def test_the_parameter_arithmetic_is_the_published_shapes():
    body, head, _, _ = decoder_split("eve_7b")
    assert body + 2 * head == 6_738_415_616  # Vicuna-7B
    body, head, _, _ = decoder_split("evev2_7b")
    assert body + 2 * head == 7_615_616_512  # Qwen2.5-7B (untied head)
    body, head, _, _ = decoder_split("evev2_1b")
    assert body + head == 1_543_714_304  # Qwen2.5-1.5B (tied head)


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
        assert (ours["samples_per_s"], ours["tokens_per_s"], ours["mfu"]) == (
            m.samples_per_s,
            m.tokens_per_s,
            m.json_mfu,
        )
        assert "mfu_head_every_token" not in ours  # recorded before the count changed: the head at every token
        assert (result["attention"], result["rows_ours"], result["compile_teacher_ours"]) == (
            "torch_varlen",
            "balanced",
            True,
        )
        assert result["compile_ours"]  # compiled decoder blocks ("default" mode)
        assert result["checkpointing_ours"] == m.checkpointing  # the planner's recompute depends on it
        assert f"{m.samples_per_s:.1f}" in readme and f"{m.mfu * 100:.1f} %" in readme and m.json[:-5] in readme
        assert f"{m.json_mfu * 100:.1f} %" in readme  # the recorded figure, in its table


@pytest.mark.parametrize("key", [*tt.MEASURED, "pretrain_mb8"])
def test_the_mfu_is_the_json_figure_rederived_with_the_head_at_supervised_positions(key):
    """The run's samples come back exactly (its tokens per sample; its recorded MFU from its samples/s with the head
    at every token), and the MFU the planner uses is the recorded one x the ratio of the two counts."""
    m = tt.PRETRAIN_7B_MB8 if key == "pretrain_mb8" else tt.MEASURED[key]
    result = json.loads((REPO / tt.RESULTS_DIR / m.json).read_text())
    tokens, every, useful = rederive(result)
    assert tokens == pytest.approx(m.tokens_per_sample, rel=1e-5)  # the JSON's figures are rounded
    assert every * m.samples_per_s / m.micro_batch / (tt.REFERENCE_PEAK_TFLOPS * 1e12) == pytest.approx(
        m.json_mfu, abs=6e-5
    )
    assert m.mfu == pytest.approx(m.json_mfu * useful / every, abs=5e-7)
    body, head, _, _ = decoder_split(m.model)
    assert 1 - head / (body + head) < m.mfu / m.json_mfu < 1  # less by at most the head's share of the parameters


def test_the_readme_lists_the_headline_runs_rederived():
    readme = " ".join((REPO / "benchmarks" / "README.md").read_text().split())  # lines wrapped anywhere
    for name, paths in HEADLINES.items():
        result = json.loads((REPO / tt.RESULTS_DIR / name).read_text())
        _, every, useful = rederive(result)
        assert name[:-5] in readme
        for path in paths:
            mfu = result["paths"][path]["mfu"]
            assert f"{mfu * 100:.1f} -> {mfu * useful / every * 100:.1f} %" in readme, (name, path)


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
        lengths = [sample_tokens(s) for s in samples]
        assert np.mean(lengths) == pytest.approx(tt.tokens_per_sample(task, 672), rel=0.015)
        supervised = [supervised_count(s) for s in draw_samples(task, 20000, np.random.default_rng(1))]
        error = np.std(supervised) / math.sqrt(len(supervised))  # of the mean: 0.3 (pretrain), 0.4 (SFT)
        assert abs(np.mean(supervised) - tt.SUPERVISED_TOKENS[task]) < 4 * error
    assert tt.supervised_per_sample("sft", 1690.0) == tt.SUPERVISED_TOKENS["sft"]
    assert tt.supervised_per_sample("other", 500.0) == 500.0  # no benchmark samples: the head at every token


def test_the_supervised_means_are_exact():
    """Captions: L labels, L uniform over 60-200. SFT: ceil(L / 2) + 2 labels, L the floor of a log-normal (median
    150, sigma 0.7) clipped to 20-1500: summed over the probabilities of each L."""
    assert tt.SUPERVISED_TOKENS["pretrain"] == np.mean(np.arange(60, 201))

    def below(x: float) -> float:  # P(X < x) of the log-normal
        return 0.5 * (1 + math.erf((math.log(x) - math.log(150)) / (0.7 * math.sqrt(2))))

    probs = {k: (1.0 if k == 1500 else below(k + 1)) - (0.0 if k == 20 else below(k)) for k in range(20, 1501)}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert sum((k + 2 - k // 2) * p for k, p in probs.items()) == pytest.approx(tt.SUPERVISED_TOKENS["sft"], abs=0.005)
    assert sum(k * p for k, p in probs.items()) + 1 == pytest.approx(tt.TEXT_TOKENS["sft"], abs=0.05)
    assert tt.tokens_per_sample("pretrain", 672, square=True) == 601 + 131
    assert tt.mean_image_tokens(1344) > 3.8 * tt.mean_image_tokens(672)
