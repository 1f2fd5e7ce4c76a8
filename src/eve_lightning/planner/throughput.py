"""Measured training throughput the planner projects from: one figure per stage kind, each traced to its run.

Every figure is a run of ``python -m eve_lightning.bench.train`` on our path (compiled decoder and teacher blocks,
``torch_varlen`` attention, balanced packed rows, one GPU, one AdamW step per micro-batch), committed as a JSON under
``benchmarks/results/`` and listed in ``benchmarks/README.md``; ``tests/planner/test_planner_throughput.py`` checks
every number here against its JSON. The decoder MFU counts 6 x decoder parameters (4 x for a frozen decoder) x
tokens, the LM head only at the supervised positions (where our path computes logits), plus causal attention, over
``REFERENCE_PEAK_TFLOPS`` (``eve_lightning.utils.flops.samples_flops``); the teacher and the patch embedding run
inside the timed step but are not counted. The committed JSONs predate that count: their ``mfu`` counts the LM head
at every token (``MeasuredStep.json_mfu``). ``MeasuredStep.mfu`` is that figure re-derived in the planner's count:
the run's samples are regenerated as the benchmark drew them (``numpy.random.default_rng(0)``, four draws of
``draw_samples``) and the recorded MFU is scaled by the ratio of the two counts' mean FLOPs per step; the test
re-derives every one.

The trained 7B decoder (EVE-7B's pretraining and SFT) was measured with activation checkpointing of every decoder
block (``--checkpoint-ours``, ``MeasuredStep.checkpointing``): its step time holds the recomputed forward, which its
MFU does not count, so the planner takes a stage's recompute relative to the run's (``planner.stage``). The other
runs had no checkpointing. The tokens per sample of the planner's default workload are those of the benchmark's
synthetic samples (``eve_lightning.bench.train.draw_samples``), whose means are computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from eve_lightning.data.geometry import GridGeometry, band_geometry, evev2_geometry, max_image_tokens

# Aspect ratios (W:H) of the benchmark's synthetic images, equally likely; ``bench.train.draw_samples`` draws from them.
ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (2, 1), (1, 2))
REFERENCE_PEAK_TFLOPS = 989.0  # dense BF16 peak of the H100 SXM and of the H200: the benchmark's MFU denominator
RESULTS_DIR = "benchmarks/results"


@dataclass(frozen=True)
class MeasuredStep:
    """One ``bench.train`` run of our path (``paths.ours`` of its JSON)."""

    workload: str  # bench.train --workload: prealign | pretrain | sft
    model: str  # bench.train --model
    card: str
    micro_batch: int
    samples_per_s: float
    tokens_per_s: float
    mfu: float  # decoder MFU over REFERENCE_PEAK_TFLOPS, the LM head at supervised positions: json_mfu re-derived
    json_mfu: float  # the JSON's paths.ours.mfu, recorded with the LM head at every token (before 2026-12-05's count)
    json: str  # file under benchmarks/results/
    readme: str  # where benchmarks/README.md lists it
    checkpointing: bool = False  # every decoder block checkpointed (bench.train --checkpoint-ours): in the step time

    @property
    def tokens_per_sample(self) -> float:
        """Mean tokens per sample of the run's batches."""
        return self.tokens_per_s / self.samples_per_s


# The current code's runs on the H200 (benchmarks/README.md, "NVIDIA H200" section). They are preferred to the
# earlier H100 runs (48.1 / 35.6 / 32.6 % MFU, older code) because the A100's memory bandwidth per peak FLOP
# (1.56-2.0 TB/s over 312 TFLOP/s) is at least the H200's (4.8 TB/s over 989), so the memory-bound part of the
# step scales to the A100 like the compute does; the H100's is lower (3.35 TB/s).
MEASURED = {
    # the 7B decoder itself, frozen (4N): the recipe's stage 1
    "prealign": MeasuredStep(
        workload="prealign",
        model="eve_7b",
        card="NVIDIA H200",
        micro_batch=24,
        samples_per_s=36.3965,
        tokens_per_s=20520.8135,
        mfu=0.546505,
        json_mfu=0.5547,
        json="2026-12-03_h200_eve_7b_prealign_mb24_varlen_compile_ours.json",
        readme="H200 section, 'Other workloads' table, row 'eve_7b prealign, decoder frozen': 36.4 samples/s, 55.5 %; "
        "'Planning a recipe': 54.7 %",
    ),
    # The 7B decoder trained whole (6N), every block checkpointed as in the recipe: the recipe's stage 2. Its MFU
    # counts 6N x tokens; the recomputed forward is in the step time, not in the count (see planner.stage).
    # Micro-batch 32 (~18k tokens, one AdamW step over the unsharded fp32 states per micro-batch): the recipe's GPU
    # takes 32 samples per optimizer step too (micro-batch 16, 2 micro-steps), its optimizer sharded 16 ways.
    "pretrain": MeasuredStep(
        workload="pretrain",
        model="eve_7b",
        card="NVIDIA H200",
        micro_batch=32,
        samples_per_s=19.4623,
        tokens_per_s=10933.2754,
        mfu=0.436745,
        json_mfu=0.4433,
        json="2026-12-05_h200_eve_7b_pretrain_mb32_varlen_compile_balanced_checkpointed_fp8.json",
        readme="'Planning a recipe' section, 'What the days are based on': 19.5 samples/s, 43.7 % (44.3 % in the "
        "JSON), every block checkpointed",
        checkpointing=True,
    ),
    # The same on SFT samples: the recipe's stage 3 and the HD SFT (measured at 672 px, carried to 1344 px)
    "sft": MeasuredStep(
        workload="sft",
        model="eve_7b",
        card="NVIDIA H200",
        micro_batch=32,
        samples_per_s=19.2998,
        tokens_per_s=10998.4558,
        mfu=0.439561,
        json_mfu=0.4466,
        json="2026-12-05_h200_eve_7b_sft_mb32_varlen_compile_balanced_checkpointed_fp8.json",
        readme="'Planning a recipe' section, 'What the days are based on': 19.3 samples/s, 44.0 % (44.7 % in the "
        "JSON), every block checkpointed",
        checkpointing=True,
    ),
    # The 1.1B decoder (eve_1b) on SFT samples, no checkpointing: EVEv2's stage 2 and SFT, which have no EVEv2
    # measurement of their kind (EVE-7B's SFT carried it before the 7B point above). Micro-batch 32 (~18.5k tokens).
    "eve_1b_sft": MeasuredStep(
        workload="sft",
        model="eve_1b",
        card="NVIDIA H200",
        micro_batch=32,
        samples_per_s=112.9956,
        tokens_per_s=64393.3593,
        mfu=0.395092,
        json_mfu=0.4157,
        json="2026-12-05_h200_eve_1b_sft_mb32_varlen_compile_balanced.json",
        readme="FP8 / SFT section (2026-12-05): ours 113.0 samples/s, 41.6 % MFU, 5.55x the reference path; "
        "'Planning a recipe': 39.5 %",
    ),
    # EVEv2: the routed decoder of Qwen2.5-1.5B's shape with vision copies, every weight trained, on caption samples
    # of ~800 px area (651 image tokens when square); no teacher. Routed against dense in the same process.
    "evev2_pretrain": MeasuredStep(
        workload="pretrain",
        model="evev2_1b",
        card="NVIDIA H200",
        micro_batch=16,
        samples_per_s=59.0388,
        tokens_per_s=46911.8406,
        mfu=0.394036,
        json_mfu=0.4491,
        json="2026-12-05_h200_evev2_1b_pretrain_mb16_varlen_compile_balanced_routed_vs_dense.json",
        readme="EVEv2 section, row 'compiled, micro-batch 16': routed 59.0 samples/s, 44.9 %; 'Planning a recipe': "
        "39.4 %",
    ),
}
MEASURED_IMAGE_SIZE = {"eve": 672, "evev2": 800}  # the runs above, by model family
# Not projected from: the 7B pretraining step at micro-batch 8 (one whole AdamW step per 8 samples), the MFU a small
# micro-batch gives on one card; the planner prints it beside the micro-batch 32 figure it uses.
PRETRAIN_7B_MB8 = MeasuredStep(
    workload="pretrain",
    model="eve_7b",
    card="NVIDIA H200",
    micro_batch=8,
    samples_per_s=16.2636,
    tokens_per_s=8895.6728,
    mfu=0.355272,
    json_mfu=0.3606,
    json="2026-12-05_h200_eve_7b_pretrain_mb8_varlen_compile_balanced_checkpointed_fp8.json",
    readme="'Planning a recipe' section, 'What the days are based on': 16.3 samples/s, 35.5 % (36.1 % in the JSON) "
    "at micro-batch 8",
    checkpointing=True,
)
STAGE_KIND = {"prealign": "prealign", "pretrain": "pretrain", "sft": "sft", "sft_hd": "sft"}  # stage -> MEASURED key
# EVEv2's caption stages 1.0 and 1.1 (the vision copies train on image tokens, most of every caption sample) carry
# the EVEv2 measurement. The others have no EVEv2 measurement of their kind and carry the EVE v1 figure of the kind
# they resemble: stage 0 trains only the patch embedding under a frozen decoder (as prealign; the 7B decoder
# itself); stage 2 and SFT train everything on conversations (as SFT, whose v1 step includes the teacher). These two
# keep the 1.1B decoder's SFT figure they had (no checkpointing in it, so the planner adds their recompute); EVE-7B's
# SFT moved to the 7B full-parameter point.
STAGE_KIND |= {
    "evev2_s0": "prealign",
    "evev2_s1_0": "evev2_pretrain",
    "evev2_s1_1": "evev2_pretrain",
    "evev2_s2": "eve_1b_sft",
    "evev2_sft": "eve_1b_sft",
}

# The settings of the measured path. A stage configured otherwise is projected with the same figure and flagged:
# eager blocks ran at 0.67-0.71x the compiled step's samples/s on the H100 (benchmarks/README.md, "Compiled decoder
# blocks"), FlexAttention at 0.92x torch_varlen; padded rows were not measured on our path. The measured runs were
# BF16 with a float32 residual stream: FP8 decoder linears ran 1.35-1.36x on the EVE-7B stages and the bf16 residual
# 1.04x on eve_1b (benchmarks/README.md), so a stage with either is projected long.
MEASURED_PATH = {
    "compile.enabled": True,
    "compile.teacher": True,
    "model.llm.attn_implementation": ("torch_varlen", "flash_attention_2"),  # the same kernel family
    "data.packing.collate": "packed",
    "model.fp8": (None,),
    "model.eve.autocast_residual": (False, None),  # None: a config from before the switch
}

# Mean text tokens per sample of draw_samples (BOS and text; an image sample's placeholder becomes its image tokens):
# captions are uniform over 60-200 tokens, + BOS = 131; SFT text is log-normal (median 150, sigma 0.7, clipped to
# 20-1500, floored: mean 191.0) + BOS, and the 5 % text-only samples have one token more: 192.0.
TEXT_TOKENS = {"pretrain": 131.0, "sft": 192.0}
# Mean supervised positions per sample of draw_samples (positions whose next label is supervised: the LM head's
# tokens): a caption's labels start at its first text token, so L of them (mean 130 over 60-200); an SFT sample of
# L + 2 ids has labels from index L // 2 on, L + 2 - L // 2 = ceil(L / 2) + 2, whose mean over the floored
# log-normal lengths above (the sum of ceil(k / 2) P(L = k) for k = 20-1500) is 95.74 + 2 = 97.74.
SUPERVISED_TOKENS = {"pretrain": 130.0, "sft": 97.74}
IMAGE_SHARE = {"pretrain": 1.0, "sft": 0.95}  # share of samples with an image


def supervised_per_sample(task: str, tokens: float) -> float:
    """Mean supervised positions per sample of ``task`` (``SUPERVISED_TOKENS``), at most ``tokens``.

    A task of the benchmark keeps its supervised positions also when ``plan.tokens_per_sample`` gives its tokens
    (the given count changes the image tokens, not the text); only a task the benchmark has no samples of (its
    tokens necessarily given) counts the LM head at every token, which the planner then counts as text tokens.
    """
    return min(SUPERVISED_TOKENS.get(task, tokens), tokens)


def mean_image_tokens(image_size: int) -> float:
    """Mean image tokens of the benchmark's aspect ratios (7, equally likely) at ``image_size`` px: 405 at 672."""
    return sum(band_geometry(w * 300, h * 300, image_size).num_image_tokens for w, h in ASPECTS) / len(ASPECTS)


def evev2_sample_geometry(aspect_w: int, aspect_h: int, max_size: int) -> GridGeometry:
    """EVEv2 geometry of a benchmark image of aspect ``aspect_w:aspect_h``: a source of ``aspect x max_size`` px.

    The source's area is at least ``max_size ** 2``, so EVEv2's training rule (``data.geometry.evev2_geometry``)
    brings every aspect to an area of about ``max_size ** 2``: a square image becomes 25 x 25 cells at 800 px.
    """
    return evev2_geometry(aspect_w * max_size, aspect_h * max_size, max_size)


def evev2_mean_image_tokens(max_size: int) -> float:
    """Mean EVEv2 image tokens of the benchmark's aspect ratios at ``max_size`` px."""
    return sum(evev2_sample_geometry(w, h, max_size).num_image_tokens for w, h in ASPECTS) / len(ASPECTS)


def tokens_per_sample(task: str, image_size: int, square: bool = False, family: str = "eve") -> float:
    """Expected tokens per sample (image tokens + text) of the benchmark's workload at ``image_size`` px.

    Args:
        task: ``pretrain`` (caption pairs, also prealign) or ``sft``.
        image_size: EVE canvas side in px (672 or 1344), or EVEv2's ``max_size`` (800 or 1600).
        square: every image square, the most image tokens a sample can have (601 at 672 px, 2353 at 1344; EVEv2:
            651 at 800 px, 2551 at 1600).
        family: ``eve`` or ``evev2`` (EVEv2's image rule: ``1 + h * (w + 1)`` tokens over 32-px cells).
    """
    if family == "evev2":
        image = max_image_tokens(image_size, "evev2") if square else evev2_mean_image_tokens(image_size)
    else:
        image = max_image_tokens(image_size) if square else mean_image_tokens(image_size)
    return IMAGE_SHARE[task] * image + TEXT_TOKENS[task]
