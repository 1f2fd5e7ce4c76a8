"""The plan as printed: each stage's memory rows and time derivation, a summary, the paper's time, the assumptions."""

from __future__ import annotations

from collections.abc import Sequence

from eve_lightning.planner.recipe import RECIPE_PATH
from eve_lightning.planner.stage import StagePlan
from eve_lightning.planner.throughput import (
    MEASURED,
    MEASURED_IMAGE_SIZE,
    PRETRAIN_7B_MB8,
    REFERENCE_PEAK_TFLOPS,
    RESULTS_DIR,
    SUPERVISED_TOKENS,
)

# The paper's EVE-7B training time (16M prealign + 33M pretrain + 665K SFT) on two 8-A100-40G nodes (paper, README)
PAPER_DAYS, PAPER_GPUS, PAPER_PEAK_TFLOPS = 9.0, 16, 312.0

ASSUMPTIONS = [
    "memory: eve_lightning.planner.memory (model states by strategy; activations counted per token and layer, "
    "scaled by factors calibrated on H100 measurements) for micro-batches whose images are all square; not counted: "
    "CUDA context and NCCL buffers (~1-3 GiB), allocator fragmentation, DeepSpeed's communication buckets",
    "tokens per sample: the mean of the benchmark's samples (bench.train.draw_samples): 7 aspect ratios from 2:1 to "
    "1:2 (405 image tokens on average at 672 px, 1577 at 1344; a square image has 601 / 2353), captions of 60-200 "
    f"tokens (131 with BOS, {SUPERVISED_TOKENS['pretrain']:g} supervised), SFT text log-normal around 150 tokens (192, "
    f"{SUPERVISED_TOKENS['sft']:g} supervised) with 5 % text-only samples",
    "throughput: the measured decoder MFU of each stage kind (eve_lightning.planner.throughput) over the FLOPs "
    "of this stage's decoder and tokens, counted as bench.train counts them (6 x parameters without the input "
    "embedding and the LM head x tokens, 6 x the LM head x supervised positions, where our path computes logits, + "
    "causal attention; 4 x and 4/6 of the attention for a frozen decoder). The teacher and the patch embedding ran "
    "inside the measured step. The committed runs recorded the LM head at every token; their MFU is re-derived in "
    "this count from their regenerated samples (the JSON's figure beside it in the table of "
    "eve_lightning.planner.throughput)",
    f"7B trained decoder (pretrain, SFT, HD SFT): the 7B full-parameter steps measured on one H200 at micro-batch "
    f"{MEASURED['pretrain'].micro_batch}, every block checkpointed (pretrain {MEASURED['pretrain'].mfu:.1%}, SFT "
    f"{MEASURED['sft'].mfu:.1%}), with one AdamW step over the unsharded fp32 states per micro-batch. The stage's "
    "micro-batch and accumulation are not taken into account (its line gives the micro-batch): the same pretraining "
    f"step at micro-batch {PRETRAIN_7B_MB8.micro_batch} measured {PRETRAIN_7B_MB8.mfu:.1%} (a whole AdamW step per "
    f"{PRETRAIN_7B_MB8.micro_batch} samples)",
    "card: the samples/s measured on the H200 x (the cluster's perf.peak_tflops / 989), the ratio of dense BF16 "
    "peaks (A100 312, H100 and H200 989 TFLOP/s): the same MFU on the planned card. The A100's memory bandwidth "
    "per peak FLOP is at least the H200's, and host overheads do not slow down with the card, so for the A100 this "
    "errs long",
    "checkpointing: the forward runs again in the backward: step time x4/3 (trained decoder) or x3/2 (frozen "
    "decoder), for N of L layers N/L of that extra (the whole step is scaled, though the teacher is not "
    "recomputed), over the measured run's. The 7B full-parameter runs checkpointed every block: their MFU (6N x "
    "tokens over the step time) already holds the recompute, so a stage checkpointing every block takes it as "
    "measured (x1) and one checkpointing N of L blocks is sped up by the same rule ((1 + N/3L) / (4/3)); the other "
    "runs (7B prealign, 1.1B, EVEv2) had none, so the whole factor applies",
    "scaling efficiency across GPUs: 0.9 (plan.scaling_efficiency), not measured: no multi-GPU run has been timed",
]


EVEV2_ASSUMPTIONS = [
    "EVEv2 throughput: stages 1.0 and 1.1 carry the MFU measured on the routed EVEv2 decoder (evev2_1b: Qwen2.5-1.5B's "
    f"shape with vision copies, every weight trained, caption samples at 800 px, {MEASURED['evev2_pretrain'].mfu:.1%} "
    "on one H200); stage 0 (frozen "
    "decoder, as EVE v1's prealign: the 7B decoder's figure) and stages 2 and SFT (conversations, as EVE v1's SFT, "
    "whose measured step includes the teacher EVEv2 does not have: the 1.1B decoder's figure, "
    f"{MEASURED['eve_1b_sft'].mfu:.1%} without checkpointing, not the 7B full-parameter one) carry the EVE v1 figure "
    "of that kind, for want of an EVEv2 measurement of it. Each MFU applies to the routed FLOPs of the EVEv2-7B "
    "decoder, its 800 / 1600 px images and their token counts",
    "EVEv2 tokens per sample: the benchmark's aspect ratios under EVEv2's rule (area about max_size^2 in 32-px "
    "cells, 1 + h (w + 1) tokens: 651 for a square image at 800 px, 2551 at 1600; the mean of the 7 aspects is 658 / "
    "2560) plus the same text as EVE v1's samples; the original's data (EVE-recap, Infinity-MM, LLaVA-OneVision) "
    "differs",
    "EVEv2 decoder FLOPs: routed, one branch per token (the vision copies replace the text weights for image tokens, "
    "same FLOPs per token): 6 x Qwen2.5-7B parameters without the input embedding and the LM head per token whose "
    "branch trains, 4 x when it is frozen (stage 0 freezes both, stages 1.x train only the vision branch), the LM "
    "head (with the text weights) at the supervised positions only, plus causal attention",
    "EVEv2-7B in the original: 16 nodes x 8 GPUs, ZeRO-3, activation checkpointing; it states no training time",
]


def format_stage(p: StagePlan) -> list[str]:
    """Memory rows and the time derivation of one stage."""
    m = p.measured
    lines = [f"== {p.name} ({p.experiment}): {p.notes[-1]}"]
    lines += [f"   {k:<32}{v:>9.2f} GiB" for k, v in p.memory.gib().items()]
    lines.append(
        f"   time: {p.samples:,} samples x {p.tokens_per_sample:.0f} tokens = "
        f"{p.flops_per_sample / 1e12:.1f} TFLOP (decoder) per sample"
    )
    ckpt = "every decoder block checkpointed" if m.checkpointing else "no checkpointing"
    lines.append(
        f"     measured: {m.model} {m.workload}, micro-batch {m.micro_batch}, {ckpt}, {m.card}: "
        f"{m.samples_per_s:.1f} samples/s at {m.tokens_per_sample:.0f} tokens, decoder MFU {m.mfu:.1%} "
        f"({RESULTS_DIR}/{m.json})"
    )
    mfu = f"MFU {p.mfu:.1%}" + ("" if p.mfu == m.mfu else " (plan.mfu)")
    recompute = "checkpointing recompute" + (", over the measured run's" if m.checkpointing else "")
    if p.recompute < 1:  # fewer blocks recomputed than in the run: the whole step is sped up by the x4/3 rule
        recompute += "; errs short: the run's optimizer step and teacher, never recomputed, are scaled too"
    lines.append(
        f"     per GPU: {mfu} -> {p.reference_samples_per_s:.2f} samples/s at {REFERENCE_PEAK_TFLOPS:g} TFLOP/s"
        f" x {p.card_ratio:.3f} (peak ratio {p.card_ratio * REFERENCE_PEAK_TFLOPS:g}/{REFERENCE_PEAK_TFLOPS:g})"
        f" / {p.recompute:.3f} ({recompute}) x {p.efficiency:.2f} (scaling) = {p.samples_per_s:.2f}"
    )
    lines.append(
        f"     {p.samples:,} / ({p.samples_per_s:.2f} samples/s x {p.n_gpus} GPUs) = {p.seconds / 3600:.1f} h"
        f" = {p.days:.2f} days"
    )
    measured_size = MEASURED_IMAGE_SIZE["evev2" if m.model.startswith("evev2") else "eve"]
    if p.family == "evev2" and not m.model.startswith("evev2"):
        lines.append(
            f"     EVEv2: no EVEv2 measurement of this stage kind; the EVE v1 {m.workload} MFU ({m.model}) carried to "
            f"this EVEv2 stage and its {p.image_size} px images"
        )
    elif p.family == "evev2":
        lines.append(
            f"     EVEv2: the routed {m.model} decoder's MFU (every weight trained, {measured_size} px) carried to "
            f"this stage's 7B decoder, trained parts and {p.image_size} px images"
        )
    elif p.image_size != measured_size:
        lines.append(f"     measured at {measured_size} px: its MFU carried to {p.image_size} px (not measured)")
    if p.off_path:
        lines.append(
            f"     OFF THE MEASURED PATH ({', '.join(p.off_path)}): projected with the measured path's figure; expect "
            "longer (eager blocks ran at 0.67-0.71x the compiled samples/s, FlexAttention at 0.92x torch_varlen)"
        )
    return lines


def paper_gap(plans: list[StagePlan]) -> str:
    """The paper's time and this plan's as decoder MFU over the same FLOPs: where the difference is."""
    flops = sum(p.samples * p.flops_per_sample for p in plans)
    square = sum(p.samples * p.square_flops_per_sample for p in plans)
    paper = PAPER_DAYS * 86400 * PAPER_GPUS * PAPER_PEAK_TFLOPS * 1e12
    ours = sum(p.seconds * p.n_gpus * p.card_ratio for p in plans) * REFERENCE_PEAK_TFLOPS * 1e12
    measured = " / ".join(
        dict.fromkeys(f"{p.mfu:.1%}" + (" (checkpointed)" if p.measured.checkpointing else "") for p in plans)
    )
    less = [
        *(["the checkpointing recompute"] if any(p.recompute > 1 for p in plans) else []),
        *(["the scaling efficiency"] if any(p.efficiency < 1 for p in plans) else []),
    ]
    return (
        f"over these decoder FLOPs the paper's days are {flops / paper:.1%} MFU for its code ({square / paper:.1%} "
        f"with square images); this plan's are {flops / ours:.1%}: the measured {measured}"
        + (f" less {' and '.join(less)}" if less else "")
    )


def format_plan(
    plans: list[StagePlan], assumptions: list[str], recipe: str | None = None, overrides: Sequence[str] = ()
) -> str:
    """The plan as printed: every stage, a summary table, the comparison with the paper, the assumptions."""
    lines = []
    shared = list(dict.fromkeys(n for p in plans for n in p.notes[:-1]))  # model-shape notes, once
    for p in plans:
        lines += format_stage(p)
    total = sum(p.days for p in plans)
    peaks = ", ".join(dict.fromkeys(f"{p.card_ratio * REFERENCE_PEAK_TFLOPS:g}" for p in plans))
    ratios = ", ".join(dict.fromkeys(f"{p.card_ratio:.3f}" for p in plans))
    lines.append(
        f"== summary: GPUs of {peaks} TFLOP/s dense BF16 peak; the figures measured at {REFERENCE_PEAK_TFLOPS:g} "
        f"TFLOP/s x {ratios} (the peak ratio)"
    )
    lines.append(f"   {'stage':<10}{'samples':>12}{'tokens/sample':>15}{'samples/s/GPU':>15}{'GPUs':>6}{'days':>8}")
    for p in plans:
        lines.append(
            f"   {p.name:<10}{p.samples:>12,}{p.tokens_per_sample:>15.0f}{p.samples_per_s:>15.2f}{p.n_gpus:>6}"
            f"{p.days:>8.2f}"
        )
    flag = " (stages off the measured path: expect longer)" if any(p.off_path for p in plans) else ""
    lines.append(f"   total{'':>51}{total:>8.2f} days{flag}")
    square = sum(p.days * p.square_flops_per_sample / p.flops_per_sample for p in plans)
    most = "" if any(p.family == "evev2" for p in plans) else " (the most image tokens per sample)"
    lines.append(f"   with every image square{most}: {square:.2f} days")
    if recipe == "eve7b":
        lines.append(
            f"   the paper: ~{PAPER_DAYS:g} days for these three stages on two 8-A100-40G nodes, with its own code"
        )
        lines.append(f"   gap: {paper_gap(plans)}")
    elif recipe == "eve7b_hd":
        lines.append(f"   the paper states no time for EVE-7B-HD (its ~{PAPER_DAYS:g} days are the 672 px EVE-7B)")
    elif recipe == "evev2_7b":
        lines.append("   the original: EVEv2-7B on 16 nodes x 8 GPUs; it states no training time")
    if recipe:
        pick = "experiment=evev2_7b +stage=<stage>" if recipe == "evev2_7b" else "experiment=<stage>"
        command = " ".join([f"python -m eve_lightning.train {pick}", *RECIPE_PATH, *overrides])
        lines.append(f"   train each stage as planned: {command}")
    lines.append("assumptions:")
    lines += [f" - {a}" for a in [*shared, *assumptions]]
    return "\n".join(lines)
