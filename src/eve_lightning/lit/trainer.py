"""The Lightning Trainer of a training run, with its strategy, plugins, callbacks and loggers, from the config.

`cfg.trainer` holds the Trainer's own keyword arguments (its `accumulate_grad_batches` is derived in the config);
the strategy node is instantiated when it is one, callbacks and loggers come from their groups (a null entry is left
out), and the plugins follow from the strategy and the SLURM preset.
"""

from __future__ import annotations

import signal
from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from eve_lightning.lit.checkpoint_io import AtomicCheckpointIO


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


def build_plugins(cfg: DictConfig, strategy: Any) -> list[Any]:
    """Atomic checkpoint writes (unless the strategy writes sharded folders) and SLURM requeue on pre-emption."""
    plugins: list[Any] = []
    if not type(strategy).__name__.startswith(("DeepSpeed", "FSDP")):  # those write sharded checkpoint folders
        plugins.append(AtomicCheckpointIO())
    slurm = cfg.get("slurm")
    if slurm and SLURMEnvironment.detect():
        # On the pre-emption signal Lightning saves an hpc checkpoint in the run dir and requeues the job; the
        # requeued job (same SLURM_JOB_ID, so the same run dir) restores it by itself.
        sig = getattr(signal, str(slurm.get("requeue_signal", "SIGUSR1")))
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=sig))
    return plugins


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of `cfg.trainer` with its strategy, plugins, callbacks and loggers (no logger: `logger=False`)."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = kwargs.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy, _convert_="all")
    loggers = build_loggers(cfg)
    return pl.Trainer(
        **kwargs,
        strategy=strategy,
        plugins=build_plugins(cfg, strategy),
        callbacks=build_callbacks(cfg),
        logger=loggers or False,
    )
