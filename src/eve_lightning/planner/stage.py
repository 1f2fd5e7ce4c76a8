"""The projection of one training stage: its per-GPU memory by component and its wall-clock on a cluster.

Memory: the model states of the configured sharding and the activations of one micro-batch whose images are all
square (``planner.memory``). Time: the stage's samples over the samples/s that the measured decoder MFU of its stage
kind gives for this stage's decoder and tokens (``planner.throughput``; both count the LM head at the supervised
positions only), scaled by the cluster's peak ratio, the checkpointing recompute of the stage over the measured run's
(``recompute_factor``) and the multi-GPU scaling efficiency.

EVEv2 stages: image tokens by EVEv2's rule (``1 + h * (w + 1)`` over 32-px cells: 651 for a square image at 800 px,
2551 at 1600), decoder FLOPs routed (one branch per token, ``utils.flops.step_flops``: image tokens count 6 x the
parameters they run that train, 4 x those frozen, text tokens alike, the LM head at the supervised positions only,
as for EVE v1), and the MFU that ``throughput.STAGE_KIND`` maps the stage to: the routed EVEv2 decoder's
measurement for the caption stages 1.0 and 1.1, the EVE v1 figure of the matching kind for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eve_lightning.data.geometry import max_image_tokens
from eve_lightning.models import attention
from eve_lightning.planner.memory import GATHERED_LAYERS, MemoryPlan, Workload, activations, model_states
from eve_lightning.planner.parameters import count_parameters, dtype_bytes
from eve_lightning.planner.throughput import (
    IMAGE_SHARE,
    MEASURED,
    MEASURED_PATH,
    REFERENCE_PEAK_TFLOPS,
    STAGE_KIND,
    TEXT_TOKENS,
    MeasuredStep,
    supervised_per_sample,
    tokens_per_sample,
)
from eve_lightning.utils.config_checks import ConfigError, check_speed_options


@dataclass
class StagePlan:
    """The memory and time projection of one stage; ``seconds = samples / (samples_per_s x n_gpus)``."""

    name: str
    experiment: str
    memory: MemoryPlan
    samples: int
    tokens_per_sample: float
    flops_per_sample: float  # decoder FLOPs, the benchmark's count (the LM head at the supervised positions)
    square_flops_per_sample: float  # the same with every image square (the most image tokens)
    mfu: float  # decoder MFU projected with (the measured one unless plan.mfu is given)
    measured: MeasuredStep
    card_ratio: float  # the cluster's dense bf16 peak / the measured card's
    recompute: float  # step time with the configured checkpointing / with the measured run's (its MFU holds that)
    efficiency: float  # multi-GPU scaling efficiency (1 on one GPU)
    n_gpus: int
    image_size: int
    off_path: list[str]  # settings that differ from the measured path's
    notes: list[str]
    family: str = "eve"  # eve | evev2 (its MFU is carried from the EVE v1 measurement of the stage kind)

    @property
    def reference_samples_per_s(self) -> float:
        """Samples/s of this stage's decoder and tokens on one GPU of the measured card, checkpointed as the run was."""
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


def off_measured_path(cfg: DictConfig) -> list[str]:
    """The settings of ``cfg`` that differ from those the throughput was measured with."""
    off = []
    for key, measured in MEASURED_PATH.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value not in (measured if isinstance(measured, tuple) else (measured,)):
            off.append(f"{key}={value}")
    return off


def recompute_factor(checkpointing: bool, trained: bool, fraction: float = 1.0) -> float:
    """Step time with activation checkpointing over the time without.

    The forward (2 units of work) of the checkpointed ``fraction`` of the layers runs again in the backward; the
    backward is 4 units for a trained decoder (activation and weight gradients), 2 for a frozen one (activation
    gradients only).
    """
    if not checkpointing:
        return 1.0
    backward = 4 if trained else 2
    return (2 + backward + 2 * fraction) / (2 + backward)


def stage_recompute(measured: MeasuredStep, checkpointing: bool, trained: bool, fraction: float = 1.0) -> float:
    """Step time of the stage's checkpointing over that of the run its MFU was measured on.

    A run's MFU counts the FLOPs of one forward and backward (6N x tokens), while its step time holds whatever its
    checkpointing recomputed: a run measured with every block checkpointed (``measured.checkpointing``, the 7B
    full-parameter points) already pays the recompute. The stage's factor is therefore taken over the run's, both
    from ``recompute_factor``: a stage checkpointing every block, like the run, gets 1 (adding x4/3 again would count
    the recompute twice); one checkpointing N of L blocks gets (1 + N/3L) / (4/3), faster than measured; over a run
    without checkpointing (every other point) it is ``recompute_factor`` itself.

    Args:
        measured: the run whose MFU the stage is projected with.
        checkpointing: the stage checkpoints some decoder blocks.
        trained: the stage's decoder weights train (the backward computes weight gradients).
        fraction: share of the stage's decoder blocks checkpointed.
    """
    run = recompute_factor(measured.checkpointing, measured.workload != "prealign")
    return recompute_factor(checkpointing, trained, fraction) / run


def stage_memory(cfg: DictConfig, counts: dict[str, Any], work: Workload, strategy: str, n_gpus: int) -> MemoryPlan:
    """Per-GPU bytes of the stage by component: model states under ``strategy``, the teacher, the activations.

    Args:
        cfg: the composed training config (dtypes, precision).
        counts: ``planner.parameters.count_parameters`` of the stage.
        work: one micro-batch of the stage on one GPU (square images: the most image tokens).
        strategy: ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp.
        n_gpus: data-parallel size.
    """
    llm_bytes = dtype_bytes(cfg.model.llm.get("dtype"))
    trained_llm = counts["text_trained"] or counts["vision_trained"]  # EVEv2 1.x: only the vision copies train
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
    return MemoryPlan(parts)


def plan_stage(cfg: DictConfig, experiment: str, options: dict[str, Any]) -> StagePlan:
    """Project the stage of a composed training config.

    Args:
        cfg: the composed training config (``planner.recipe.compose_stage``).
        experiment: its ``conf/experiment`` name, for the report and the error messages.
        options: the ``plan.*`` options: ``mfu`` (a float, or one per stage), ``scaling_efficiency``,
            ``tokens_per_sample`` (one per task).

    Raises:
        SystemExit: with a one-line message, for what training would refuse or what the plan cannot project.
    """
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
    family = counts["family"]
    given = options.get("tokens_per_sample", {})
    if task not in given and task not in TEXT_TOKENS:
        raise SystemExit(f"no token count assumed for {task}: set plan.tokens_per_sample.{task}=N")
    # time: the mean sample; memory: samples whose images are all square (the most image tokens)
    tps = float(given[task]) if task in given else tokens_per_sample(task, size, family=family)
    square_tps = float(given[task]) if task in given else tokens_per_sample(task, size, square=True, family=family)
    grid = size // int(cfg.model.eve.patch_size)
    work = Workload(
        micro_batch=int(cfg.data.batch_size),
        tokens_per_sample=square_tps,
        images_per_sample=IMAGE_SHARE.get(task, 1.0),
        patches_per_image=grid * grid,
        image_tokens_per_image=max_image_tokens(size, family),  # memory: a square image
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
    # the decoder counts as trained when any of its weights trains (EVEv2 stages 1.x: only the vision copies)
    trained_llm = counts["text_trained"] or counts["vision_trained"]
    partly = trained_llm and counts["frozen_llm"] > 0
    memory = stage_memory(cfg, counts, work, strategy, n_gpus)
    shape = counts["shape"]
    decoder = counts["decoder_params"]  # trained and frozen parameters apart: a partly frozen decoder counts both

    def sample_flops(n: float) -> float:
        # EVEv2's image tokens run the vision copies: a sample's text tokens are its task's (at most n), also with a
        # given plan.tokens_per_sample (which sets the image tokens); a task without benchmark samples counts every
        # token as a text token, the LM head at every one (supervised_per_sample). EVE v1: one branch for all.
        text = min(TEXT_TOKENS.get(task, n), n)
        return decoder.flops(n, n * n, supervised_per_sample(task, n), image_tokens=n - text)

    flops, square_flops = sample_flops(tps), sample_flops(square_tps)
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
        + (
            f"text weights {'trained' if counts['text_trained'] else 'frozen'}, vision weights "
            f"{'trained' if counts['vision_trained'] else 'frozen'} (routed)"
            if family == "evev2"
            else f"decoder {'frozen' if not trained_llm else 'partly trained' if partly else 'trained'}"
            + (f" ({counts['frozen_llm'] / 1e9:.2f}B of its parameters frozen)" if partly else "")
        )
    )
    return StagePlan(
        name=stage,
        experiment=experiment,
        memory=memory,
        samples=int(cfg.trainer.max_steps) * int(cfg.global_batch_size),
        tokens_per_sample=tps,
        flops_per_sample=flops,
        square_flops_per_sample=square_flops,
        mfu=mfu,
        measured=measured,
        card_ratio=float(cfg.perf.peak_tflops) / REFERENCE_PEAK_TFLOPS,
        # over the measured run's checkpointing: the 7B full-parameter runs' MFU already holds their recompute
        recompute=stage_recompute(measured, checkpointed > 0, trained_llm, checkpointed / shape.layers),
        efficiency=float(options.get("scaling_efficiency", 0.9)) if n_gpus > 1 else 1.0,
        n_gpus=n_gpus,
        image_size=size,
        off_path=off_measured_path(cfg),
        notes=notes,
        family=family,
    )
