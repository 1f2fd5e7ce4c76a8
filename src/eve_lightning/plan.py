"""Plan a recipe before running it: per-GPU memory by component and the projected wall-clock of every stage.

    python -m eve_lightning.plan recipe=eve7b cluster=a100_2x8            # the three EVE-7B stages
    python -m eve_lightning.plan recipe=eve7b_hd cluster=a100_2x8         # ... with the 1344 px HD SFT
    python -m eve_lightning.plan experiment=eve7b_sft_r672 cluster=a100_2x8 strategy=fsdp data.batch_size=8

A recipe plans its experiments on the path our throughput was measured on (``RECIPE_PATH``: FSDP, compiled blocks,
``torch_varlen``, packed rows); ``experiment=`` plans a config as it is. Any training override composes as it does
for ``eve_lightning.train``. Planner options: ``plan.mfu.<stage>=F`` or ``plan.mfu=F`` (decoder MFU to project
with instead of the measured one), ``plan.scaling_efficiency=F``, ``plan.tokens_per_sample.<pretrain|sft>=N``.
Nothing is loaded: the model is built on the meta device from its config (or the published shape when the config
points to a checkpoint folder that is not there), so the plan runs anywhere. Every assumption is printed with the plan.
The memory model is ``eve_lightning.utils.memory_model``; the throughput comes from the runs of
``eve_lightning.bench.train`` listed in ``eve_lightning.utils.throughput_tables`` (``benchmarks/results``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import eve_lightning.train  # noqa: F401  (registers the config resolvers: eve_cwd, eve_run_id)
from eve_lightning.data.geometry import max_image_tokens
from eve_lightning.lit.freezing import apply_freezing
from eve_lightning.models import attention
from eve_lightning.models.build import build_eve_model
from eve_lightning.models.shapes import CLIP_L14_336, VICUNA_7B, build_random_model
from eve_lightning.utils.config_checks import ConfigError, check_speed_options
from eve_lightning.utils.flops import samples_flops
from eve_lightning.utils.memory_model import (
    GATHERED_LAYERS,
    DecoderShape,
    MemoryPlan,
    Workload,
    activations,
    model_states,
)
from eve_lightning.utils.throughput_tables import (
    IMAGE_SHARE,
    MEASURED,
    MEASURED_IMAGE_SIZE,
    MEASURED_PATH,
    REFERENCE_PEAK_TFLOPS,
    RESULTS_DIR,
    STAGE_KIND,
    TEXT_TOKENS,
    MeasuredStep,
    tokens_per_sample,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RECIPES = {
    "eve7b": ["eve7b_prealign_r672", "eve7b_pretrain_r672", "eve7b_sft_r672"],
    "eve7b_hd": ["eve7b_prealign_r672", "eve7b_pretrain_r672", "eve7b_sft_r1344_hd"],
}
# What a recipe adds to its experiments: the settings of the path whose throughput was measured
# (throughput_tables.MEASURED_PATH). ZeRO-3 refuses compiled blocks, hence FSDP. Overrides given on the command line
# come after these.
RECIPE_PATH = [
    "strategy=fsdp",
    "compile.enabled=true",
    f"{attention.CONFIG_KEY}={attention.VARLEN}",
    "data.packing.collate=packed",
]
# The paper's EVE-7B training time (16M prealign + 33M pretrain + 665K SFT) on two 8-A100-40G nodes (paper, README)
PAPER_DAYS, PAPER_GPUS, PAPER_PEAK_TFLOPS = 9.0, 16, 312.0
USAGE = f"""usage: python -m eve_lightning.plan (recipe=NAME | experiment=NAME ...) [cluster=NAME] [OVERRIDE ...]
                                  [plan.OPTION=VALUE ...]

Per-GPU memory and projected days of training stages, before running them. Nothing is loaded or written.

  recipe=NAME        eve7b (prealign, pretrain, SFT at 672 px) | eve7b_hd (SFT at 1344 px), planned on the path
                     the throughput was measured on: {" ".join(RECIPE_PATH)}
  experiment=NAME    a conf/experiment config, planned as it is (repeatable)
  cluster=NAME       a100_2x8 | a100_1x8 | gpu1: the GPU count and perf.peak_tflops
  OVERRIDE           any training override, e.g. data.batch_size=8 gradient_checkpointing=false
  plan.mfu.<stage>=F                          decoder MFU to project a stage with (plan.mfu=F: every stage)
  plan.scaling_efficiency=F                   throughput kept per GPU on several GPUs (default 0.9)
  plan.tokens_per_sample.<pretrain|sft>=N     tokens per sample (image + text) instead of the benchmark's mean
  -h, --help         this help

The measured figures and their runs: src/eve_lightning/utils/throughput_tables.py, benchmarks/README.md.
"""


@dataclass
class StagePlan:
    """The memory and time projection of one stage; ``seconds = samples / (samples_per_s x n_gpus)``."""

    name: str
    experiment: str
    memory: MemoryPlan
    samples: int
    tokens_per_sample: float
    flops_per_sample: float  # decoder FLOPs, the benchmark's count
    square_flops_per_sample: float  # the same with every image square (the most image tokens)
    mfu: float  # decoder MFU projected with (the measured one unless plan.mfu is given)
    measured: MeasuredStep
    card_ratio: float  # the cluster's dense bf16 peak / the measured card's
    recompute: float  # step time with the configured checkpointing / without
    efficiency: float  # multi-GPU scaling efficiency (1 on one GPU)
    n_gpus: int
    image_size: int
    off_path: list[str]  # settings that differ from the measured path's
    notes: list[str]

    @property
    def reference_samples_per_s(self) -> float:
        """Samples/s of this stage's decoder and tokens on one GPU of the measured card, no checkpointing."""
        return self.mfu * REFERENCE_PEAK_TFLOPS * 1e12 / self.flops_per_sample

    @property
    def samples_per_s(self) -> float:
        """Projected samples/s per GPU on the planned cluster."""
        return self.reference_samples_per_s * self.card_ratio * self.efficiency / self.recompute

    @property
    def seconds(self) -> float:
        return self.samples / (self.samples_per_s * self.n_gpus)

    @property
    def days(self) -> float:
        return self.seconds / 86400


def strategy_name(cfg: DictConfig) -> str:
    """Name the sharding of the trainer's strategy node: ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp."""
    s = cfg.trainer.get("strategy", "auto")
    if isinstance(s, str):  # Lightning's registry names
        if s.startswith("fsdp"):
            return "fsdp"
        if s.startswith("deepspeed"):
            return "deepspeed_zero3" if "3" in s else "deepspeed_zero2"
        return "ddp"
    target = str(s.get("_target_", ""))
    if "DeepSpeed" in target:
        return f"deepspeed_zero{int(s.config.zero_optimization.stage)}"
    if "fsdp" in target.lower():
        return "fsdp"
    return "ddp"


def architecture(model_cfg: DictConfig, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """HF config kwargs of the decoder and the teacher: from the config, the checkpoint folder, or published."""
    shapes = []
    for part, published, label in (("llm", VICUNA_7B, "Vicuna-7B"), ("teacher", CLIP_L14_336, "CLIP ViT-L/14-336")):
        node = model_cfg.get(part) or {}
        if node.get("config"):
            shapes.append(OmegaConf.to_container(node.config, resolve=True))
            continue
        path = Path(str(node.get("path"))) / "config.json"
        if path.is_file():
            data = json.loads(path.read_text())
            shapes.append(data.get("vision_config", data) if part == "teacher" else data)
            continue
        notes.append(f"{part}: {node.get('path')} is not here; using the published {label} shape")
        shapes.append(dict(published))
    return shapes[0], shapes[1]


def count_parameters(cfg: DictConfig, notes: list[str]) -> dict[str, Any]:
    """Trained / frozen parameter counts of the stage (model built on the meta device)."""
    llm_shape, teacher_shape = architecture(cfg.model, notes)
    eve = OmegaConf.to_container(cfg.model.eve, resolve=True)
    with torch.device("meta"):
        model = build_eve_model(
            llm={"config": llm_shape, "attn_implementation": attention.SDPA},
            eve=eve,
            teacher={"config": teacher_shape, "select_layer": -2},
        )
    apply_freezing(model, list(cfg.stage.trainable))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    llm = model.vlm.llm
    frozen_llm = sum(p.numel() for p in llm.parameters() if not p.requires_grad)
    teacher = sum(p.numel() for p in model.teacher.parameters()) if model.teacher is not None else 0
    embed = llm.get_input_embeddings().weight.numel()
    return {
        "trained": trained,
        "frozen_llm": frozen_llm,
        "teacher": teacher,
        "decoder": sum(p.numel() for p in llm.parameters()),
        "decoder_no_embed": sum(p.numel() for p in llm.parameters()) - embed,
        "layer": sum(p.numel() for p in llm.model.layers[0].parameters()),
        "shape": DecoderShape.from_hf(llm.config),
        "align_layers": len(model.vlm.aligner.layer_indices) if model.vlm.aligner is not None else 0,
    }


def dtype_bytes(name: Any) -> int:
    return 2 if str(name) in ("bfloat16", "float16", "bf16", "fp16") else 4


def off_measured_path(cfg: DictConfig) -> list[str]:
    """The settings of ``cfg`` that differ from those the throughput was measured with."""
    off = []
    for key, measured in MEASURED_PATH.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value not in (measured if isinstance(measured, tuple) else (measured,)):
            off.append(f"{key}={value}")
    return off


def plan_stage(cfg: DictConfig, experiment: str, options: dict[str, Any]) -> StagePlan:
    try:
        check_speed_options(cfg)  # what training would refuse is not planned either
    except ConfigError as err:
        raise SystemExit(f"{experiment}: {err}") from None
    notes: list[str] = []
    counts = count_parameters(cfg, notes)
    stage, task = cfg.stage.name, cfg.data.task
    if stage not in STAGE_KIND:
        raise SystemExit(f"{experiment}: no measured throughput for stage {stage!r} (one of {sorted(STAGE_KIND)})")
    if not str(cfg.trainer.devices).isdigit():
        raise SystemExit(f"trainer.devices={cfg.trainer.devices}: the plan needs a number (e.g. cluster=a100_2x8)")
    n_gpus = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    strategy = strategy_name(cfg)
    size = int(cfg.model.eve.image_size)
    given = options.get("tokens_per_sample", {})
    if task not in given and task not in TEXT_TOKENS:
        raise SystemExit(f"no token count assumed for {task}: set plan.tokens_per_sample.{task}=N")
    # time: the mean sample; memory: samples whose images are all square (the most image tokens)
    tps = float(given[task]) if task in given else tokens_per_sample(task, size)
    square_tps = float(given[task]) if task in given else tokens_per_sample(task, size, square=True)
    grid = size // int(cfg.model.eve.patch_size)
    work = Workload(
        micro_batch=int(cfg.data.batch_size),
        tokens_per_sample=square_tps,
        images_per_sample=IMAGE_SHARE.get(task, 1.0),
        patches_per_image=grid * grid,
        image_tokens_per_image=max_image_tokens(size),  # memory: a square image, the most tokens
        vision_width=int(cfg.model.eve.vision_hidden),
        # FSDP's own option checkpoints every block, like gradient_checkpointing=true
        checkpointing=bool(cfg.get("gradient_checkpointing", False))
        or bool(OmegaConf.select(cfg, "trainer.strategy.checkpoint_layers", default=False)),
        checkpoint_layers=cfg.get("gradient_checkpointing_layers"),
        compiled=bool((cfg.get("compile") or {}).get("enabled")),
    )
    layers = int(counts["shape"].layers)
    if work.checkpoint_layers is not None and work.checkpoint_layers > layers:
        raise SystemExit(
            f"{experiment}: gradient_checkpointing_layers={work.checkpoint_layers} but the decoder has {layers} "
            f"blocks; use 0-{layers} or null"
        )
    llm_bytes = dtype_bytes(cfg.model.llm.get("dtype"))
    trained_llm = counts["frozen_llm"] == 0
    parts = model_states(
        counts["trained"],
        counts["frozen_llm"],
        weight_bytes=llm_bytes,
        frozen_weight_bytes=llm_bytes,  # a frozen decoder keeps its configured dtype
        strategy=strategy,
        n_gpus=n_gpus,
        gathered=GATHERED_LAYERS * counts["layer"],
        autocast_copies=str(cfg.trainer.get("precision", "")).startswith("bf16"),
    )
    teacher_bytes = counts["teacher"] * dtype_bytes((cfg.model.get("teacher") or {}).get("dtype"))
    parts["weights (frozen)"] += teacher_bytes / (n_gpus if strategy in ("deepspeed_zero3", "fsdp") else 1)
    parts |= activations(
        counts["shape"], work, trained=trained_llm, align_layers=counts["align_layers"], residual_bytes=llm_bytes
    )
    shape = counts["shape"]
    flops, square_flops = (
        samples_flops(counts["decoder_no_embed"], shape.layers, shape.hidden, [n], trained_llm)
        for n in (tps, square_tps)
    )
    measured = MEASURED[STAGE_KIND[stage]]
    mfu_option = options.get("mfu", {})
    mfu = float(mfu_option if isinstance(mfu_option, float) else mfu_option.get(stage, measured.mfu))
    if cfg.perf.get("peak_tflops") is None:
        raise SystemExit("perf.peak_tflops is not set by this cluster preset: pick a GPU cluster or set it")
    checkpointed = work.checkpointed(shape.layers)
    blocks = "compiled" if work.compiled else "eager"
    notes.append(
        f"{strategy}, {n_gpus} GPUs, micro-batch {work.micro_batch}, "
        f"checkpointing {f'{checkpointed}/{shape.layers} layers' if checkpointed else 'off'}, {blocks} blocks, "
        f"{OmegaConf.select(cfg, attention.CONFIG_KEY)} attention, {cfg.data.packing.collate} rows, "
        f"decoder {'trained' if trained_llm else 'frozen'}"
    )
    return StagePlan(
        name=stage,
        experiment=experiment,
        memory=MemoryPlan(parts),
        samples=int(cfg.trainer.max_steps) * int(cfg.global_batch_size),
        tokens_per_sample=tps,
        flops_per_sample=flops,
        square_flops_per_sample=square_flops,
        mfu=mfu,
        measured=measured,
        card_ratio=float(cfg.perf.peak_tflops) / REFERENCE_PEAK_TFLOPS,
        recompute=recompute_factor(checkpointed > 0, trained_llm, checkpointed / shape.layers),
        efficiency=float(options.get("scaling_efficiency", 0.9)) if n_gpus > 1 else 1.0,
        n_gpus=n_gpus,
        image_size=size,
        off_path=off_measured_path(cfg),
        notes=notes,
    )


def bench_step_memory(result: dict[str, Any]) -> MemoryPlan:
    """The memory model of an ``eve_lightning.bench.train`` run of our path (its JSON), to check against its peak.

    That benchmark keeps float32 trained weights under bf16 autocast, a bf16 frozen decoder for prealign, a bf16
    teacher, fused AdamW, and a copy of the initial state dict on the GPU (to restart each path from the same
    weights); its rows are packed, without checkpointing. ``compile_ours`` selects the compiled blocks' activation
    factors.
    """
    with torch.device("meta"):
        model = build_random_model(result["model"], result["workload"], torch.device("meta"), attention.SDPA)
    params = list(model.parameters())
    trained = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    frozen_bytes = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    ours = result["paths"]["ours"]
    shape = DecoderShape.from_hf(model.vlm.llm.config)
    share = 0.95 if result["workload"] == "sft" else 1.0
    work = Workload(
        micro_batch=int(result["micro_batch"]),
        tokens_per_sample=ours["tokens_per_s"] / ours["samples_per_s"],
        images_per_sample=share,
        patches_per_image=48 * 48,
        image_tokens_per_image=max_image_tokens(MEASURED_IMAGE_SIZE),
        vision_width=model.vlm.config.vision_hidden,
        compiled=bool(result.get("compile_ours")),
    )
    parts = model_states(
        trained, frozen, weight_bytes=4, frozen_weight_bytes=2, strategy="ddp", n_gpus=1, autocast_copies=True
    )
    parts["weights (frozen)"] = frozen_bytes
    parts["initial state-dict copy (benchmark)"] = trained * 4 + frozen_bytes
    parts |= activations(
        shape, work, trained=result["workload"] != "prealign", align_layers=len(model.vlm.aligner.layer_indices)
    )
    return MemoryPlan(parts)


def compose_stage(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = "."  # the plan never writes; hydra:runtime is not set outside a Hydra run
    return cfg


def split_args(argv: Sequence[str]) -> tuple[list[tuple[str, list[str]]], list[str], dict[str, Any]]:
    """(experiments with the overrides they bring, training overrides, planner options) from ``key=value``.

    A recipe's experiments bring ``RECIPE_PATH``; ``experiment=`` brings nothing.
    """
    experiments: list[tuple[str, list[str]]] = []
    overrides: list[str] = []
    options: dict[str, Any] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if arg.startswith("-"):
            raise SystemExit(f"unknown option {arg!r}: arguments are key=value (python -m eve_lightning.plan --help)")
        if key == "recipe":
            if value not in RECIPES:
                raise SystemExit(f"unknown recipe {value!r}: one of {sorted(RECIPES)}")
            experiments += [(e, list(RECIPE_PATH)) for e in RECIPES[value]]
        elif key == "experiment":
            experiments.append((value, []))
        elif key.startswith("plan."):
            node = options
            *path, leaf = key[len("plan.") :].split(".")
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = float(value)
        else:
            overrides.append(arg)
    if not experiments:
        raise SystemExit("name what to plan: recipe=eve7b | recipe=eve7b_hd | experiment=<conf/experiment name>")
    return experiments, overrides, options


def format_stage(p: StagePlan) -> list[str]:
    """Memory rows and the time derivation of one stage."""
    m = p.measured
    lines = [f"== {p.name} ({p.experiment}): {p.notes[-1]}"]
    lines += [f"   {k:<32}{v:>9.2f} GiB" for k, v in p.memory.gib().items()]
    lines.append(
        f"   time: {p.samples:,} samples x {p.tokens_per_sample:.0f} tokens = "
        f"{p.flops_per_sample / 1e12:.1f} TFLOP (decoder) per sample"
    )
    lines.append(
        f"     measured: {m.model} {m.workload}, micro-batch {m.micro_batch}, {m.card}: {m.samples_per_s:.1f} "
        f"samples/s at {m.tokens_per_sample:.0f} tokens, decoder MFU {m.mfu:.1%} ({RESULTS_DIR}/{m.json})"
    )
    mfu = f"MFU {p.mfu:.1%}" + ("" if p.mfu == m.mfu else " (plan.mfu)")
    lines.append(
        f"     per GPU: {mfu} -> {p.reference_samples_per_s:.2f} samples/s at {REFERENCE_PEAK_TFLOPS:g} TFLOP/s"
        f" x {p.card_ratio:.3f} (peak ratio {p.card_ratio * REFERENCE_PEAK_TFLOPS:g}/{REFERENCE_PEAK_TFLOPS:g})"
        f" / {p.recompute:.3f} (checkpointing recompute) x {p.efficiency:.2f} (scaling) = {p.samples_per_s:.2f}"
    )
    lines.append(
        f"     {p.samples:,} / ({p.samples_per_s:.2f} samples/s x {p.n_gpus} GPUs) = {p.seconds / 3600:.1f} h"
        f" = {p.days:.2f} days"
    )
    if p.image_size != MEASURED_IMAGE_SIZE:
        lines.append(f"     measured at {MEASURED_IMAGE_SIZE} px: its MFU carried to {p.image_size} px (not measured)")
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
    measured = " / ".join(dict.fromkeys(f"{p.mfu:.1%}" for p in plans))
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
    lines.append(f"   with every image square (the most image tokens per sample): {square:.2f} days")
    if recipe == "eve7b":
        lines.append(
            f"   the paper: ~{PAPER_DAYS:g} days for these three stages on two 8-A100-40G nodes, with its own code"
        )
        lines.append(f"   gap: {paper_gap(plans)}")
    elif recipe == "eve7b_hd":
        lines.append(f"   the paper states no time for EVE-7B-HD (its ~{PAPER_DAYS:g} days are the 672 px EVE-7B)")
    if recipe:
        command = " ".join(["python -m eve_lightning.train experiment=<stage>", *RECIPE_PATH, *overrides])
        lines.append(f"   train each stage as planned: {command}")
    lines.append("assumptions:")
    lines += [f" - {a}" for a in [*shared, *assumptions]]
    return "\n".join(lines)


def recompute_factor(checkpointing: bool, trained: bool, fraction: float = 1.0) -> float:
    """Step time with activation checkpointing over the time without (the MFU was measured without).

    The forward (2 units of work) of the checkpointed ``fraction`` of the layers runs again in the backward; the
    backward is 4 units for a trained decoder (activation and weight gradients), 2 for a frozen one (activation
    gradients only).
    """
    if not checkpointing:
        return 1.0
    backward = 4 if trained else 2
    return (2 + backward + 2 * fraction) / (2 + backward)


ASSUMPTIONS = [
    "memory: eve_lightning.utils.memory_model (model states by strategy; activations counted per token and layer, "
    "scaled by factors calibrated on H100 measurements) for micro-batches whose images are all square; not counted: "
    "CUDA context and NCCL buffers (~1-3 GiB), allocator fragmentation, DeepSpeed's communication buckets",
    "tokens per sample: the mean of the benchmark's samples (bench.train.draw_samples): 7 aspect ratios from 2:1 to "
    "1:2 (405 image tokens on average at 672 px, 1577 at 1344; a square image has 601 / 2353), captions of 60-200 "
    "tokens (131 with BOS), SFT text log-normal around 150 tokens (192) with 5 % text-only samples",
    "throughput: the measured decoder MFU of each stage kind (eve_lightning.utils.throughput_tables) over the FLOPs "
    "of this stage's decoder and tokens, counted as bench.train counts them (6 x parameters without the input "
    "embedding x tokens + causal attention; 4 x and 4/6 of the attention for a frozen decoder). The teacher and the "
    "patch embedding ran inside the measured step; the LM head is counted at every token though our path computes "
    "logits only at supervised positions (as in the measurement)",
    f"7B trained decoder: carries the 1.1B decoder's MFU (pretrain {MEASURED['pretrain'].mfu:.1%}, SFT "
    f"{MEASURED['sft'].mfu:.1%}). The teacher and patch embedding take ~11 % of the 1.1B step but ~4 % of the 7B "
    "prealign step (the 7B would run ~7 % faster); the LM head is 6 % of the 1.1B FLOP count but 2 % of the 7B one "
    "(~4 % slower)",
    "card: the samples/s measured on the H200 x (the cluster's perf.peak_tflops / 989), the ratio of dense BF16 "
    "peaks (A100 312, H100 and H200 989 TFLOP/s): the same MFU on the planned card. The A100's memory bandwidth "
    "per peak FLOP is at least the H200's, and host overheads do not slow down with the card, so for the A100 this "
    "errs long",
    "checkpointing: the measured steps had none; with it the forward runs again in the backward: step time x4/3 "
    "(trained decoder) or x3/2 (frozen decoder), for N of L layers N/L of that extra (the whole step is scaled, "
    "though the teacher is not recomputed)",
    "scaling efficiency across GPUs: 0.9 (plan.scaling_efficiency), not measured: no multi-GPU run has been timed",
]


def main(argv: Sequence[str] | None = None) -> list[StagePlan]:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE)
        return []
    experiments, overrides, options = split_args(args)
    plans = [plan_stage(compose_stage([f"experiment={e}", *extra, *overrides]), e, options) for e, extra in experiments]
    recipes = [a.partition("=")[2] for a in args if a.startswith("recipe=")]
    recipe = recipes[0] if len(recipes) == 1 and len(experiments) == len(RECIPES[recipes[0]]) else None
    print(format_plan(plans, ASSUMPTIONS, recipe, overrides))
    return plans


if __name__ == "__main__":
    main()
