"""Start-up validation of a composed training config, and the resolvers that derive its dependent values.

Every impossible combination fails before any model is built, with one line that names the fix. Values that follow
from others are interpolations, never written into a resolved config: `${eve_accumulation:...}` (gradient
accumulation from the global batch and the topology), `${eve_uses_teacher:...}` (the teacher view from the
alignment weight), `${eve_family:...}` (the model family, eve or evev2, from the model's `_target_`) and
`${eve_partial:...}` (a config node built as a factory, e.g. the LitModule's model).
"""

from __future__ import annotations

import glob
import inspect
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eve_lightning.checkpoints.resume import check_resume_source, newest_complete, resume_candidates
from eve_lightning.data.geometry import max_image_tokens
from eve_lightning.data.options import (
    LoaderOptions,
    OptionsError,
    PackingOptions,
    StreamOptions,
    SyntheticShapesSpec,
    as_options,
    synthetic_spec,
)
from eve_lightning.models.fp8 import RECIPES as FP8_RECIPES
from eve_lightning.models.fp8 import Fp8Unavailable, check_fp8_device
from eve_lightning.models.fused_ce import CE_IMPLS
from eve_lightning.utils import run_names  # noqa: F401  (registers the resolvers conf/train.yaml uses)

CONF_DIR = Path(os.environ.get("EVE_CONF_DIR", Path(__file__).resolve().parents[3] / "conf"))


ZERO3_COMPILE = (
    "compile.enabled=true is not supported under DeepSpeed ZeRO-3 (its per-module gather hooks break the compiled "
    "blocks into pieces): set compile.enabled=false, or use strategy=ddp or fsdp"
)


class ConfigError(ValueError):
    """A configuration that cannot run; the message says how to fix it."""


def available(group: str) -> list[str]:
    """Option names of a config group (file stems under conf/<group>; `_base` and other `_` files are parts)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def check_group_overrides(argv: list[str]) -> str | None:
    """The first command-line choice of a config group that names no option, as a one-line fix; None if all do.

    `resolution=672` -> "resolution=672 is not an option of resolution: choose one of r1344, r672". Sweeps
    (`model=tiny,demo_125m`) check every value; `null` clears an optional group; other overrides pass through.
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra") or "." in key or any(c in value for c in "()[]{}*$"):
            continue  # Hydra's own groups, config keys, and sweep functions (choice(...)) are Hydra's to check
        if not (CONF_DIR / key).is_dir():
            continue
        options = available(key)
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                return f"{key}={choice} is not an option of {key}: choose one of {', '.join(options)}"
    return None


def _moved_data_keys() -> dict[str, str]:
    """Flat `data.*` keys of earlier versions -> their place in the typed option groups (`data.options`)."""
    moved = {}
    for group, cls in (("loader", LoaderOptions), ("stream", StreamOptions), ("packing", PackingOptions)):
        moved |= {f"data.{f.name}": f"data.{group}.{f.name}" for f in fields(cls)}
    moved |= {f"data.demo_{f.name}": f"data.synthetic.{f.name}" for f in fields(SyntheticShapesSpec)}
    return moved


MOVED_DATA_KEYS = _moved_data_keys()


def check_moved_keys(argv: list[str]) -> str | None:
    """The first command-line override of a data key that moved into an option group, as a one-line fix."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in MOVED_DATA_KEYS:
            return f"{key} is now {MOVED_DATA_KEYS[key]}: write {MOVED_DATA_KEYS[key]}={value}"
    return None


def world_size(trainer: DictConfig) -> int:
    """Devices x nodes of the Trainer config (GPU 'auto'/-1 counts the visible GPUs)."""
    return topology_size(trainer.get("devices", 1), trainer.get("num_nodes", 1), trainer.get("accelerator"))


def topology_size(devices: Any, num_nodes: Any, accelerator: str | None) -> int:
    """Devices x nodes; `devices` may be a count, a list of device ids, or 'auto'/-1 (the visible GPUs)."""
    if devices in ("auto", -1, "-1"):
        if accelerator == "cpu":
            devices = 1
        else:
            import torch

            devices = max(1, torch.cuda.device_count())
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    return int(devices) * int(num_nodes or 1)


def check_stage(cfg: DictConfig) -> None:
    stages = available("stage")
    stage = cfg.get("stage")
    if stage is None or OmegaConf.is_missing(cfg, "stage"):
        raise ConfigError(f"no stage given: add +stage=<{'|'.join(stages)}> (e.g. +stage=prealign)")
    name = stage.get("name")
    if name not in stages:
        raise ConfigError(f"unknown stage {name!r}: use +stage=<{'|'.join(stages)}>")


# The model factories of each family (conf/model/*.yaml `_target_`); any other factory counts as EVE v1.
MODEL_FAMILIES = {
    "eve_lightning.models.build.build_eve_model": "eve",
    "eve_lightning.models.evev2.build.build_evev2_model": "evev2",
}
FAMILY_MODELS = {"eve": "tiny, demo_125m, eve_1b or eve_7b", "evev2": "evev2_tiny, evev2_1b or evev2_7b"}


def model_family(target: Any) -> str:
    """The family (``eve`` or ``evev2``) of the model a `_target_` builds."""
    return MODEL_FAMILIES.get(str(target), "eve")


def check_family(cfg: DictConfig) -> None:
    """The stage trains the family of model the config builds (EVEv2 stages need an EVEv2 model, and back)."""
    have = model_family(OmegaConf.select(cfg, "model._target_", default=None))
    want = str(cfg.stage.get("family") or "eve")
    if want != have:
        raise ConfigError(
            f"stage {cfg.stage.name} trains an {want} model but the model config builds an {have} model: add "
            f"model=<{FAMILY_MODELS.get(want, want)}>, or pick a stage of the {have} family"
        )


def accumulation_steps(global_batch_size: Any, micro_batch: Any, world: int) -> int:
    """Micro-batches per optimizer step and rank: global batch / (micro-batch x world); 1 without a global batch.

    Raises:
        ConfigError: the global batch is not a multiple of micro-batch x world.
    """
    if global_batch_size in (None, "null"):
        return 1
    glob_bs, micro = int(global_batch_size), int(micro_batch)
    per_step = micro * world
    if glob_bs % per_step:
        raise ConfigError(
            f"global_batch_size={glob_bs} is not a multiple of data.batch_size ({micro}) x devices x nodes "
            f"({world}) = {per_step}: change data.batch_size or global_batch_size so that it divides"
        )
    return glob_bs // per_step


def accumulation(cfg: DictConfig) -> int:
    """Gradient accumulation that turns micro-batch x world size into the global batch; checks it divides."""
    return accumulation_steps(cfg.get("global_batch_size"), cfg.data.batch_size, world_size(cfg.trainer))


def check_accumulation(cfg: DictConfig) -> int:
    """The derived accumulation, checked against what the Trainer and the data module will be given."""
    steps = accumulation(cfg)
    for key in ("trainer.accumulate_grad_batches", "data.accumulation"):
        given = OmegaConf.select(cfg, key, default=None)
        if given is not None and int(given) != steps:
            raise ConfigError(
                f"{key}={given} but global_batch_size / (data.batch_size x devices x nodes) = {steps}: the "
                f"accumulation is derived, so set global_batch_size (or data.batch_size) instead of {key}"
            )
    return steps


def check_data_options(cfg: DictConfig) -> None:
    """The option groups of `data` (loader, stream, packing, synthetic): known keys and possible values."""
    data = cfg.get("data")
    if data is None:
        return
    if data.get("_target_") == "eve_lightning.data.datamodule.EveDataModule":
        from eve_lightning.data.datamodule import EveDataModule

        params = set(inspect.signature(EveDataModule.__init__).parameters) - {"self"}
        for key in data:
            if key != "_target_" and key not in params:
                moved = MOVED_DATA_KEYS.get(f"data.{key}")
                fix = f"it is now {moved}" if moved else f"the data options are {', '.join(sorted(params))}"
                raise ConfigError(f"data.{key} is no option of the data module: {fix}")
    try:
        for key, cls in (("loader", LoaderOptions), ("stream", StreamOptions), ("packing", PackingOptions)):
            if key in data:
                as_options(cls, _plain(data[key]))
        if "synthetic" in data:
            synthetic_spec(_plain(data.synthetic))
    except OptionsError as err:
        raise ConfigError(str(err)) from None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def check_resolution(cfg: DictConfig) -> None:
    want = cfg.stage.get("resolution")
    have = cfg.get("resolution_name")
    if want and have and want != have:
        raise ConfigError(f"stage {cfg.stage.name} trains at {want} but resolution={have}: add resolution={want}")
    size, max_len = int(cfg.model.eve.image_size), int(cfg.model.eve.max_length)
    family = model_family(OmegaConf.select(cfg, "model._target_", default=None))
    need = max_image_tokens(size, family)
    if need + 8 > max_len:
        fix = (
            "raise model.eve.max_length (4096 for 1344 px) or use resolution=r672"
            if family == "eve"
            else "raise model.eve.max_length (4096 at 1600 px) or use resolution=evev2_r800"
        )
        raise ConfigError(
            f"a square {size}-px image takes {need} tokens, which leaves no room in model.eve.max_length={max_len}: "
            + fix
        )


def check_paths(cfg: DictConfig) -> None:
    llm = cfg.model.llm
    if llm.get("path") and not Path(llm.path).is_dir():
        raise ConfigError(
            f"model.llm.path={llm.path} does not exist: put the LLM checkpoint (e.g. vicuna-7b-v1.5) there, "
            "set model.llm.path=/your/folder, or set paths.model_dir"
        )
    teacher = cfg.model.get("teacher")
    if float(cfg.model.eve.get("align_weight", 0)) > 0 and teacher and teacher.get("path"):
        if not Path(teacher.path).is_dir():
            raise ConfigError(
                f"model.teacher.path={teacher.path} does not exist: put clip-vit-large-patch14-336 there, set "
                "model.teacher.path=/your/folder, or train without the teacher with model.eve.align_weight=0"
            )
    init = cfg.get("init_from")
    if init and not (Path(init) / "config.json").is_file():
        raise ConfigError(f"init_from={init} is not a stage export (no config.json): point it at <run>/export")


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` -> the newest complete checkpoint of this experiment and stage; other values are checked.

    Whatever is chosen is proved to load weights-only first (`checkpoints.resume`): a checkpoint that holds code,
    is cut short or is an FSDP sharded folder stops the run here, before any strategy reads it.
    """
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if ckpt == "last":
        pattern = str(
            Path(cfg.paths.log_dir) / cfg.task_name / cfg.experiment_name / cfg.stage.name / "*" / "checkpoints"
        )
        found = resume_candidates([Path(p) for p in glob.glob(pattern)])
        if not found:
            raise ConfigError(f"ckpt_path=last found no checkpoint in {pattern}: give ckpt_path=<file.ckpt>")
        try:
            chosen = newest_complete(found)
        except ValueError as err:
            raise ConfigError(f"ckpt_path=last: {err}") from None
        if chosen is None:
            raise ConfigError(f"ckpt_path=last: every checkpoint in {pattern} is incomplete: start the stage anew")
        return str(chosen)
    if not Path(ckpt).exists():
        raise ConfigError(f"ckpt_path={ckpt} does not exist")
    try:
        check_resume_source(ckpt)
    except ValueError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    return str(ckpt)


def check_multirun(cfg: DictConfig, mode_is_multirun: bool, launcher: str | None) -> None:
    """Refuse what a multirun cannot do: publish one model from many points, or DDP under the basic launcher.

    Hydra's basic launcher re-executes the sweep in each DDP child process.
    """
    if mode_is_multirun and cfg.get("publish"):
        raise ConfigError(
            "publish=true in a multirun would have every point replace the same published model: sweep without it, "
            "then rerun the point you want with publish=true"
        )
    if mode_is_multirun and world_size(cfg.trainer) > 1 and (launcher or "basic") == "basic":
        raise ConfigError(
            "a multirun sweep with several devices needs a launcher that starts the ranks itself: add "
            "hydra/launcher=submitit_eve (SLURM), or run one `python -m eve_lightning.train` per point"
        )


# The classes and functions a config may instantiate, by exact import path: nothing else is built from a config.
# No prefix matches: a package also holds loaders and converters that must never run from a command line.
ALLOWED_TARGETS = frozenset(
    {
        "eve_lightning.callbacks.benchmark_validation.BenchmarkValidation",
        "eve_lightning.callbacks.checkpoint.LastStepCheckpoint",
        "eve_lightning.callbacks.progress.StepProgressBar",
        "eve_lightning.callbacks.stage_export.StageExport",
        "eve_lightning.callbacks.step_profiler.StepProfiler",
        "eve_lightning.callbacks.throughput.Throughput",
        "eve_lightning.data.datamodule.EveDataModule",
        "eve_lightning.eval.callback.BenchmarkValidation",  # its earlier path, still named by older configs
        "eve_lightning.lit.eve_module.EveLitModule",
        "eve_lightning.lit.loggers.wandb_logger",
        "eve_lightning.lit.strategies.fsdp_strategy",
        "eve_lightning.models.build.build_eve_model",
        "eve_lightning.models.evev2.build.build_evev2_model",
        "lightning.pytorch.callbacks.EarlyStopping",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.RichProgressBar",
        "lightning.pytorch.callbacks.TQDMProgressBar",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "lightning.pytorch.loggers.WandbLogger",
        "lightning.pytorch.strategies.DDPStrategy",
        "lightning.pytorch.strategies.DeepSpeedStrategy",
        "lightning.pytorch.strategies.FSDPStrategy",
        "optuna.samplers.TPESampler",
    }
)


def iter_targets(node, path: str = ""):
    """(config path, `_target_`) pairs anywhere in a config tree."""
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        for key, value in node.items_ex(resolve=False) if OmegaConf.is_dict(node) else node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield path, str(value)
            else:
                yield from iter_targets(value, here)
    elif OmegaConf.is_list(node) or isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{path}[{i}]")


def check_targets(cfg: DictConfig) -> None:
    """Refuse `_target_`s that are not in `ALLOWED_TARGETS` or `security.extra_targets` (exact import paths)."""
    if OmegaConf.select(cfg, "security.extra_target_prefixes", default=None) is not None:
        raise ConfigError(
            "security.extra_target_prefixes is no longer read: list each class or function you trust by its "
            "exact import path in security.extra_targets"
        )
    allowed = ALLOWED_TARGETS | {str(t) for t in OmegaConf.select(cfg, "security.extra_targets", default=[]) or []}
    for path, target in iter_targets(cfg):
        if target not in allowed:
            raise ConfigError(
                f"{path or '<root>'}._target_={target} is not in the instantiation allowlist; if you trust it, add "
                f"its exact import path to security.extra_targets (e.g. 'security.extra_targets=[{target}]')"
            )


def check_speed_options(cfg: DictConfig) -> None:
    """Checkpointing and compile options that cannot go together."""
    layers = cfg.get("gradient_checkpointing_layers")
    if layers is not None:
        if not cfg.get("gradient_checkpointing", False):
            raise ConfigError(
                f"gradient_checkpointing_layers={layers} needs gradient_checkpointing=true (or set it to null)"
            )
        if int(layers) < 0:
            raise ConfigError(f"gradient_checkpointing_layers={layers}: use 0 or more decoder blocks, or null for all")
        strategy = (cfg.get("trainer") or {}).get("strategy")
        if isinstance(strategy, DictConfig) and strategy.get("checkpoint_layers"):
            raise ConfigError(
                "gradient_checkpointing_layers cannot choose blocks while the FSDP strategy checkpoints every block "
                "(trainer.strategy.checkpoint_layers=true): set one of them off"
            )
    if (cfg.get("compile") or {}).get("enabled") and zero_stage(cfg) == 3:
        raise ConfigError(ZERO3_COMPILE)
    strategy = (cfg.get("trainer") or {}).get("strategy")
    fsdp_checkpointing = isinstance(strategy, DictConfig) and strategy.get("checkpoint_layers")
    if (cfg.get("compile") or {}).get("enabled") and fsdp_checkpointing:
        raise ConfigError(
            "trainer.strategy.checkpoint_layers=true wraps the compiled blocks in a checkpoint, whose recomputation "
            "fails under torch.compile: with compile.enabled=true use gradient_checkpointing=true instead (the "
            "checkpoint goes inside the compiled blocks)"
        )
    ce_impl = OmegaConf.select(cfg, "model.eve.ce_impl", default="torch")
    if ce_impl not in CE_IMPLS:
        raise ConfigError(f"model.eve.ce_impl={ce_impl}: use one of {', '.join(CE_IMPLS)}")
    if ce_impl != "torch" and zero_stage(cfg) == 3:
        raise ConfigError(
            f"model.eve.ce_impl={ce_impl} reads the whole LM head, which ZeRO-3 partitions: use model.eve.ce_impl=torch"
        )
    fp8 = OmegaConf.select(cfg, "model.fp8", default=None)
    if fp8 is not None:
        if fp8 not in FP8_RECIPES:
            raise ConfigError(f"model.fp8={fp8}: use one of {', '.join(FP8_RECIPES)}, or null")
        try:
            check_fp8_device()
        except Fp8Unavailable as err:
            raise ConfigError(str(err)) from None


def zero_stage(cfg: DictConfig) -> int | None:
    """The DeepSpeed ZeRO stage of the configured strategy (None: not DeepSpeed)."""
    stage = OmegaConf.select(cfg, "trainer.strategy.config.zero_optimization.stage", default=None)
    return int(stage) if stage is not None else None


def validate(cfg: DictConfig) -> int:
    """Run every check; returns the gradient accumulation to use."""
    check_stage(cfg)
    check_family(cfg)
    check_resolution(cfg)
    check_paths(cfg)
    check_speed_options(cfg)
    check_data_options(cfg)
    return check_accumulation(cfg)


def _accumulation_resolver(global_batch_size: Any, micro_batch: Any, devices: Any, num_nodes: Any, accel: Any) -> int:
    return accumulation_steps(global_batch_size, micro_batch, topology_size(devices, num_nodes, accel))


def _uses_teacher(align_weight: Any) -> bool:
    return float(align_weight or 0) > 0


def _partial(node: DictConfig) -> DictConfig:
    """A copy of a `_target_` node that `hydra.utils.instantiate` builds as a factory (`_partial_: true`)."""
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"eve_partial takes a config node, e.g. ${{eve_partial:${{model}}}}; got {node!r}")
    return OmegaConf.create({**OmegaConf.to_container(node, resolve=True), "_partial_": True})


# `${eve_accumulation:<global batch>,<micro-batch>,<devices>,<nodes>,<accelerator>}`: the accumulation to use
OmegaConf.register_new_resolver("eve_accumulation", _accumulation_resolver, replace=True)
# `${eve_uses_teacher:<model.eve.align_weight>}`: the 336-px teacher view is built only for a positive weight
OmegaConf.register_new_resolver("eve_uses_teacher", _uses_teacher, replace=True)
# `${eve_family:${model._target_}}`: eve | evev2, the image rule and token geometry the data must follow
OmegaConf.register_new_resolver("eve_family", model_family, replace=True)
# `${eve_partial:${model}}`: the model node as a factory, called when the LitModule configures its model
OmegaConf.register_new_resolver("eve_partial", _partial, replace=True)
