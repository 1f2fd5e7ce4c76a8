"""Plan a recipe before running it: per-GPU memory by component and the projected wall-clock of every stage.

    python -m eve_lightning.plan recipe=eve7b cluster=a100_2x8            # the three EVE-7B stages
    python -m eve_lightning.plan recipe=eve7b_hd cluster=a100_2x8         # ... with the 1344 px HD SFT
    python -m eve_lightning.plan experiment=eve7b_sft_r672 cluster=a100_2x8 strategy=fsdp data.batch_size=8

Any training override composes as it does for ``eve_lightning.train``. Planner options: ``plan.mfu.<stage>=F``
or ``plan.mfu=F`` (decoder MFU to project with), ``plan.scaling_efficiency=F``, ``plan.tokens_per_sample.<task>=N``.
Nothing is loaded: the model is built on the meta device from its config (or the published shape when the config
points to a checkpoint folder that is not there), so the plan runs anywhere. Every assumption is printed with the plan.
The memory model is ``eve_lightning.utils.memory_model``; the throughput comes from the decoder MFU measured by
``eve_lightning.bench.train`` (``benchmarks/results``).
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
from eve_lightning.bench.train import CLIP_L14_336, DECODERS, build_model
from eve_lightning.lit.freezing import apply_freezing
from eve_lightning.models.build import build_eve_model
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

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RECIPES = {
    "eve7b": ["eve7b_prealign_r672", "eve7b_pretrain_r672", "eve7b_sft_r672"],
    "eve7b_hd": ["eve7b_prealign_r672", "eve7b_pretrain_r672", "eve7b_sft_r1344_hd"],
}
# Published shapes (Vicuna-7B decoder, CLIP ViT-L/14-336), used when a config names a checkpoint folder that is
# not on this machine.
VICUNA_7B = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, **DECODERS["eve_7b"])
# Decoder MFU of our path measured on one H100 (benchmarks/results), packed rows, FlexAttention, no activation
# checkpointing. Eager blocks: 7B frozen decoder 32.8 % (prealign, micro-batch 8); trained decoders only measured at
# 1.1B: 13.5 % (pretrain), 13.9 % (SFT). Compiled blocks (compile.enabled): 46.2 % (7B prealign, micro-batch 10),
# 31.5 % (1.1B pretrain, micro-batch 40), 20.7 % (1.1B SFT, micro-batch 16, rows not yet filled). Compiled blocks
# and teacher with a variable-length flash kernel (torch_varlen or flash_attention_2), balanced rows: 48.1 % (7B
# prealign, micro-batch 12), 35.6 % (1.1B pretrain, micro-batch 32), 32.6 % (1.1B SFT, micro-batch 16).
MEASURED_MFU = {
    "eager": {"prealign": 0.328, "pretrain": 0.135, "sft": 0.139, "sft_hd": 0.139},
    "compiled": {"prealign": 0.462, "pretrain": 0.315, "sft": 0.207, "sft_hd": 0.207},
    "compiled_varlen": {"prealign": 0.481, "pretrain": 0.356, "sft": 0.326, "sft_hd": 0.326},
}
# packed rows through a variable-length flash kernel; flash_attention_2 (the flash-attn package, the same kernel
# family) is assumed to run like the measured torch_varlen
VARLEN_ATTENTION = ("torch_varlen", "flash_attention_2")
TOKENS_PER_SAMPLE = {  # expanded tokens: image tokens of a square image + text (LLaVA-like means)
    ("pretrain", 672): 601 + 130,
    ("sft", 672): 0.95 * 601 + 150,
    ("pretrain", 1344): 2353 + 130,
    ("sft", 1344): 0.95 * 2353 + 150,
}
IMAGE_SHARE = {"pretrain": 1.0, "sft": 0.95}
ORIGINAL_DAYS = 9.0  # EVE-7B on two 8-A100 nodes, from the paper


@dataclass
class StagePlan:
    name: str
    experiment: str
    memory: MemoryPlan
    samples: int
    flops_per_sample: float
    mfu: float
    seconds: float
    notes: list[str]


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
            llm={"config": llm_shape, "attn_implementation": "sdpa"},
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


def plan_stage(cfg: DictConfig, experiment: str, options: dict[str, Any]) -> StagePlan:
    try:
        check_speed_options(cfg)  # what training would refuse is not planned either
    except ConfigError as err:
        raise SystemExit(f"{experiment}: {err}") from None
    notes: list[str] = []
    counts = count_parameters(cfg, notes)
    stage, task = cfg.stage.name, cfg.data.task
    if not str(cfg.trainer.devices).isdigit():
        raise SystemExit(f"trainer.devices={cfg.trainer.devices}: the plan needs a number (e.g. cluster=a100_2x8)")
    n_gpus = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    strategy = strategy_name(cfg)
    size = int(cfg.model.eve.image_size)
    given = options.get("tokens_per_sample", {})
    if task not in given and (task, size) not in TOKENS_PER_SAMPLE:
        raise SystemExit(f"no token count assumed for {task} at {size} px: set plan.tokens_per_sample.{task}=N")
    tps = float(given[task] if task in given else TOKENS_PER_SAMPLE[(task, size)])
    tps = min(tps, float(cfg.model.eve.max_length))
    grid = size // int(cfg.model.eve.patch_size)
    cells = grid // int(cfg.model.eve.pool_stride)
    work = Workload(
        micro_batch=int(cfg.data.batch_size),
        tokens_per_sample=tps,
        images_per_sample=IMAGE_SHARE[task],
        patches_per_image=grid * grid,
        image_tokens_per_image=cells * (cells + 1) + 1,
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
    memory = MemoryPlan(parts)
    samples = int(cfg.trainer.max_steps) * int(cfg.global_batch_size)
    shape = counts["shape"]
    flops = samples_flops(counts["decoder_no_embed"], shape.layers, shape.hidden, [tps], trained_llm)
    mfu_option = options.get("mfu", {})
    blocks = "compiled" if (cfg.get("compile") or {}).get("enabled") else "eager"
    varlen = cfg.model.llm.get("attn_implementation") in VARLEN_ATTENTION
    if blocks == "compiled" and varlen and cfg.compile.get("teacher", True):
        blocks = "compiled_varlen"
    measured = MEASURED_MFU[blocks][stage]
    mfu = float(mfu_option if isinstance(mfu_option, float) else mfu_option.get(stage, measured))
    if cfg.perf.get("peak_tflops") is None:
        raise SystemExit("perf.peak_tflops is not set by this cluster preset: pick a GPU cluster or set it")
    peak = float(cfg.perf.peak_tflops) * 1e12
    efficiency = float(options.get("scaling_efficiency", 0.9))
    seconds = samples * flops / (mfu * peak * n_gpus * (efficiency if n_gpus > 1 else 1.0))
    checkpointed = work.checkpointed(shape.layers)
    seconds *= recompute_factor(checkpointed > 0, trained_llm, checkpointed / shape.layers)
    notes.append(
        f"{strategy}, {n_gpus} GPUs, micro-batch {work.micro_batch}, {tps:.0f} tokens/sample, "
        f"checkpointing {f'{checkpointed}/{shape.layers} layers' if checkpointed else 'off'}, {blocks} blocks, "
        f"decoder {'trained' if trained_llm else 'frozen'}"
    )
    return StagePlan(stage, experiment, memory, samples, flops, mfu, seconds, notes)


def bench_step_memory(result: dict[str, Any]) -> MemoryPlan:
    """The memory model of an ``eve_lightning.bench.train`` run of our path (its JSON), to check against its peak.

    That benchmark keeps float32 trained weights under bf16 autocast, a bf16 frozen decoder for prealign, a bf16
    teacher, fused AdamW, and a copy of the initial state dict on the GPU (to restart each path from the same
    weights); its rows are packed, without checkpointing. ``compile_ours`` selects the compiled blocks' activation
    factors.
    """
    with torch.device("meta"):
        model = build_model(result["model"], result["workload"], torch.device("meta"), "sdpa")
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
        image_tokens_per_image=601,
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


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(experiments, training overrides, planner options) from ``key=value`` arguments."""
    experiments: list[str] = []
    overrides: list[str] = []
    options: dict[str, Any] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "recipe":
            if value not in RECIPES:
                raise SystemExit(f"unknown recipe {value!r}: one of {sorted(RECIPES)}")
            experiments += RECIPES[value]
        elif key == "experiment":
            experiments.append(value)
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


def format_plan(plans: list[StagePlan], assumptions: list[str]) -> str:
    lines = []
    shared = list(dict.fromkeys(n for p in plans for n in p.notes[:-1]))  # model-shape notes, once
    for p in plans:
        lines.append(f"== {p.name} ({p.experiment}): {p.notes[-1]}")
        for k, v in p.memory.gib().items():
            lines.append(f"   {k:<32}{v:>9.2f} GiB")
        lines.append(
            f"   {p.samples:,} samples x {p.flops_per_sample / 1e12:.1f} TFLOP (decoder) at MFU {p.mfu:.1%}: "
            f"{p.seconds / 3600:.1f} h = {p.seconds / 86400:.2f} days"
        )
    total = sum(p.seconds for p in plans) / 86400
    lines.append(f"== recipe total: {total:.2f} days (the original: ~{ORIGINAL_DAYS:g} days on two 8-A100 nodes)")
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
    "scaled by factors calibrated on H100 measurements); not counted: CUDA context and NCCL buffers (~1-3 GiB), "
    "allocator fragmentation, DeepSpeed's communication buckets",
    "tokens per sample: pretrain = 601 image tokens (672 px, square) + 130 caption; SFT = 95 % with an image + "
    "150 text tokens (LLaVA-665K-like); at 1344 px 2353 image tokens; capped at model.eve.max_length",
    "time: decoder FLOPs counted as bench.train counts them (6x parameters x tokens + causal attention; 4x and 4/6 "
    "of the attention for a frozen decoder) / (MFU x the cluster's perf.peak_tflops x GPUs x scaling efficiency); "
    "teacher and patch embedding time not counted separately (they are inside the measured MFU's step time)",
    "MFU: measured on one H100 by eve_lightning.bench.train (packed rows, FlexAttention, no checkpointing); "
    "eager blocks: prealign 32.8 % with the 7B decoder, pretrain 13.5 % and SFT 13.9 % only measured at 1.1B; "
    "compiled blocks (compile.enabled=true): 46.2 %, 31.5 % and 20.7 %; compiled with a variable-length flash kernel "
    "and teacher (model.llm.attn_implementation=torch_varlen; flash_attention_2 assumed alike): 48.1 %, 35.6 % "
    "and 32.6 %; "
    "the 1.1B figures stand in for 7B, whose "
    "larger matrices usually run at a higher MFU; assumed to carry to A100 (312 TFLOP/s dense bf16)",
    "checkpointing: a stage with it on recomputes the forward, so its time is x4/3 (trained decoder) or x3/2 "
    "(frozen decoder) of the measured no-checkpointing step; with N of L layers checkpointed, N/L of that extra",
    "scaling efficiency across GPUs: 0.9 (plan.scaling_efficiency)",
]


def main(argv: Sequence[str] | None = None) -> list[StagePlan]:
    experiments, overrides, options = split_args(sys.argv[1:] if argv is None else argv)
    plans = [plan_stage(compose_stage([f"experiment={e}", *overrides]), e, options) for e in experiments]
    print(format_plan(plans, ASSUMPTIONS))
    return plans


if __name__ == "__main__":
    main()
