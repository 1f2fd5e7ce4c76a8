"""Training entry point: `python -m eve_lightning.train +stage=<prealign|pretrain|sft|sft_hd> [overrides]`.

Composes the Hydra config, validates it (one-line errors naming the fix), resolves it once in the main process,
builds data, model, callbacks, loggers and Trainer from it, fits, and prints where the checkpoint, the stage export
and the logs are. Returns the final training loss, the objective of Hydra sweeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from eve_lightning.data.shards import DataSizeError, DataSourceError
from eve_lightning.lit.checkpoint_io import AtomicCheckpointIO
from eve_lightning.lit.eve_module import EveLitModule
from eve_lightning.utils.config_checks import (
    CONF_DIR,
    ConfigError,
    check_group_overrides,
    check_multirun,
    check_targets,
    resolve_ckpt_path,
    validate,
)
from eve_lightning.utils.logging import get_logger
from eve_lightning.utils.run_names import run_id  # noqa: F401  (the run dir resolver; tests clear its cache)

log = get_logger(__name__)
MULTIRUN_FILE = "multirun.yaml"  # what Hydra writes in a sweep folder before its first job
# The frozen teacher stays in eval mode on purpose; Lightning warns about any eval-mode module at fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Mid-epoch resume is exact here: the DataModule's state (saved in the checkpoint) repositions the stream.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Loggers of `cfg.logger` (a null entry is left out); a logger that cannot be built raises its own error."""
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        if spec is None:
            continue
        try:
            loggers.append(instantiate(spec, _convert_="all"))
        except InstantiationException as err:  # e.g. logger=wandb without the package: show the reason itself
            raise (err.__cause__ or err) from None
    return loggers


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Callbacks of `cfg.callbacks` (a null entry is left out); progress bars only with trainer.enable_progress_bar."""
    callbacks = []
    for spec in (cfg.get("callbacks") or {}).values():
        if spec is None:
            continue
        callback = instantiate(spec, _convert_="all")
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue  # Lightning refuses a progress bar callback when the trainer's bar is off
        callbacks.append(callback)
    return callbacks


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as logged to W&B and CSV (`hparams.yaml`): every key but Hydra's own."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


@dataclass
class Run:
    """Everything a training run is made of, built from the config (nothing has run yet)."""

    data_module: Any
    module: EveLitModule
    trainer: pl.Trainer
    ckpt_path: str | None
    accumulate: int


def build(cfg: DictConfig) -> Run:
    """Validate the config and build data, model wrapper, callbacks, loggers and Trainer from it."""
    accumulate = validate(cfg)
    check_targets(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None:
        check_multirun(cfg, hc.mode == RunMode.MULTIRUN, hc.runtime.choices.get("hydra/launcher"))
    OmegaConf.resolve(cfg)  # resolve ${hydra:...} here, once; nothing below sees a live interpolation
    if float(cfg.model.eve.get("align_weight", 0)) == 0 and "teacher_view" in cfg.data:
        cfg.data.teacher_view = False  # no teacher: do not build its view

    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the logged run config
    data_module = instantiate(cfg.data, _convert_="all", accumulation=accumulate)
    try:
        data_module.preflight()
    except (DataSourceError, DataSizeError) as err:
        raise ConfigError(f"data: {err}") from None
    model_factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    module = EveLitModule(
        model_factory=model_factory,
        stage=OmegaConf.to_container(cfg.stage),
        optim=OmegaConf.to_container(cfg.optim),
        total_steps=int(cfg.trainer.max_steps),
        init_from=cfg.get("init_from"),
        gradient_checkpointing=bool(cfg.get("gradient_checkpointing", False)),
        gradient_checkpointing_layers=cfg.get("gradient_checkpointing_layers"),
        tokenizer=getattr(data_module, "tokenizer_source", None),
        max_consecutive_nonfinite=int(cfg.guards.max_consecutive_nonfinite),
        compile=OmegaConf.to_container(cfg.compile) if cfg.get("compile") else None,
        loss_normalization=str(cfg.get("loss_normalization", "global")),
    )
    trainer_kwargs = OmegaConf.to_container(cfg.trainer)
    strategy = trainer_kwargs.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy, _convert_="all")
    loggers = build_loggers(cfg)
    plugins: list[Any] = []
    if not type(strategy).__name__.startswith(("DeepSpeed", "FSDP")):  # those write sharded checkpoint folders
        plugins.append(AtomicCheckpointIO())
    slurm = cfg.get("slurm")
    if slurm and SLURMEnvironment.detect():
        # On the pre-emption signal Lightning saves an hpc checkpoint in the run dir and requeues the job; the
        # requeued job (same SLURM_JOB_ID, so the same run dir) restores it by itself.
        sig = getattr(signal, str(slurm.get("requeue_signal", "SIGUSR1")))
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=sig))
    trainer = pl.Trainer(
        **trainer_kwargs,
        plugins=plugins,
        strategy=strategy,
        accumulate_grad_batches=accumulate,
        callbacks=build_callbacks(cfg),
        logger=loggers or False,
    )
    return Run(data_module, module, trainer, ckpt_path, accumulate)


def train(cfg: DictConfig) -> float | None:
    """Validate, build and fit. Returns the last `train/loss` (or the metric named by `optimized_metric`)."""
    run = build(cfg)
    trainer = run.trainer
    log.info(
        "stage %s | experiment %s | global batch %s = %s x %d devices x %d accumulation | run dir %s",
        cfg.stage.name,
        cfg.experiment_name,
        cfg.get("global_batch_size"),
        cfg.data.batch_size,
        trainer.world_size,
        run.accumulate,
        cfg.paths.output_dir,
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config(cfg))  # the run's config in W&B and hparams.yaml: sweeps compare on it
    ok = False
    try:
        trainer.fit(run.module, datamodule=run.data_module, ckpt_path=run.ckpt_path, weights_only=True)
        ok = True
    finally:
        finish_wandb(ok)
    report_outputs(trainer, cfg)
    metric = cfg.get("optimized_metric") or "train/loss"
    value = trainer.callback_metrics.get(metric)
    return float(value) if value is not None else None


def finish_wandb(ok: bool) -> None:
    """Close the W&B run (marked failed on error) so multirun jobs never log into each other."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if ok else 1)


def report_outputs(trainer: pl.Trainer, cfg: DictConfig) -> None:
    if not trainer.is_global_zero:
        return
    lines = [f"run dir:    {cfg.paths.output_dir}"]
    for cb in trainer.callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.last_model_path:
            lines.append(f"checkpoint: {cb.last_model_path}")
        written = getattr(cb, "written", None)
        if written:
            lines.append(f"export:     {written}")
            lines += [f"published:  {p}" for p in getattr(cb, "publish_to", [])]
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            run_dir = getattr(getattr(lg, "experiment", None), "dir", None)
            mode = os.environ.get("WANDB_MODE", "online")
            lines.append(f"wandb ({mode}): {Path(run_dir).parent if run_dir else lg.save_dir}")
        elif type(lg).__name__ == "CSVLogger":
            lines.append(f"metrics:    {Path(lg.log_dir) / 'metrics.csv'}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; configuration errors end the process with one line on stderr and exit code 2."""
    try:
        return train(cfg)
    except (ConfigError, DataSourceError, DataSizeError) as err:  # data errors: e.g. a demo folder not ours
        if HydraConfig.initialized():
            try:
                discard_unused_run_dir(Path(HydraConfig.get().runtime.output_dir), Path(cfg.paths.log_dir))
            except Exception as cleanup_err:  # the config error is what the user must see
                log.debug("run dir left in place: %s", cleanup_err)
        print(f"eve_lightning.train: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def discard_unused_run_dir(run_dir: Path, log_dir: Path) -> None:
    """Remove a run dir that holds nothing but Hydra's start-up files, and the empty folders above it (to log_dir).

    A run refused at start-up leaves no trace; a run dir with anything else in it (checkpoints, metrics) is kept,
    and so is a sweep folder that still holds another job.
    """
    if not run_dir.is_dir():
        return
    hydra_files = {f"{HydraConfig.get().job.name}.log"}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] != ".hydra" and str(rel) not in hydra_files:
            return
    shutil.rmtree(run_dir)
    log_dir = log_dir.resolve()
    parent = run_dir.resolve().parent
    while parent != log_dir and log_dir in parent.parents and {p.name for p in parent.iterdir()} <= {MULTIRUN_FILE}:
        (parent / MULTIRUN_FILE).unlink(missing_ok=True)  # a sweep folder with no job left in it
        parent.rmdir()
        parent = parent.parent


if __name__ == "__main__":
    problem = check_group_overrides(sys.argv[1:])
    if problem:
        print(f"eve_lightning.train: error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
