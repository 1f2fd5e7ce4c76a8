"""Training entry point: `python -m eve_lightning.train +stage=<prealign|pretrain|sft|sft_hd> [overrides]`.

Validates the composed Hydra config (one-line errors naming the fix), resolves it once in the main process,
instantiates the data module (`data`), the LightningModule (`module`) and the Trainer from it, fits, and prints where
the checkpoint, the stage export and the logs are. Returns the final training loss, the objective of Hydra sweeps.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eve_lightning.data.shards import DataSizeError, DataSourceError
from eve_lightning.utils.config_checks import (
    CONF_DIR,
    ConfigError,
    check_group_overrides,
    check_moved_keys,
    check_multirun,
    check_targets,
    resolve_ckpt_path,
    validate,
)
from eve_lightning.utils.logging import get_logger
from eve_lightning.utils.run_dir import discard_unused_run_dir

if TYPE_CHECKING:  # Lightning is imported once the config has passed its checks: a mistake is reported in ~1 s
    import lightning.pytorch as pl

    from eve_lightning.lit.eve_module import EveLitModule

log = get_logger(__name__)
# The frozen teacher stays in eval mode on purpose; Lightning warns about any eval-mode module at fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Mid-epoch resume is exact here: the DataModule's state (saved in the checkpoint) repositions the stream.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


@dataclass
class Run:
    """Everything a training run is made of, built from the config (nothing has run yet)."""

    data_module: Any
    module: EveLitModule
    trainer: pl.Trainer
    ckpt_path: str | None


def build(cfg: DictConfig) -> Run:
    """Validate the config, then instantiate data module, LightningModule and Trainer (callbacks, loggers) from it."""
    validate(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None:
        check_multirun(cfg, hc.mode == RunMode.MULTIRUN, hc.runtime.choices.get("hydra/launcher"))
    OmegaConf.resolve(cfg)  # resolve ${hydra:...} here, once; nothing below sees a live interpolation
    check_targets(cfg)  # on the resolved tree: a resolver (oc.create, eve_partial) can make `_target_` nodes

    import lightning.pytorch as pl

    from eve_lightning.lit.trainer import build_trainer

    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the logged run config
    data_module = instantiate(cfg.data, _convert_="all")
    try:
        data_module.preflight()
    except (DataSourceError, DataSizeError) as err:
        raise ConfigError(f"data: {err}") from None
    module = instantiate(cfg.module, _convert_="all")
    return Run(data_module, module, build_trainer(cfg), ckpt_path)


def train(cfg: DictConfig) -> float | None:
    """Validate, build and fit. Returns the last `train/loss` (or the metric named by `optimized_metric`)."""
    run = build(cfg)
    from eve_lightning.lit.reporting import finish_wandb, report_outputs, run_config

    trainer = run.trainer
    log.info(
        "stage %s | experiment %s | global batch %s = %s x %d devices x %d accumulation | run dir %s",
        cfg.stage.name,
        cfg.experiment_name,
        cfg.get("global_batch_size"),
        cfg.data.batch_size,
        trainer.world_size,
        trainer.accumulate_grad_batches,
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
    report_outputs(trainer, cfg.paths.output_dir)
    metric = cfg.get("optimized_metric") or "train/loss"
    value = trainer.callback_metrics.get(metric)
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; configuration errors end the process with one line on stderr and exit code 2."""
    try:
        return train(cfg)
    except (ConfigError, DataSourceError, DataSizeError) as err:  # data errors: e.g. a demo folder not ours
        if HydraConfig.initialized():
            hc = HydraConfig.get()
            try:
                discard_unused_run_dir(Path(hc.runtime.output_dir), Path(cfg.paths.log_dir), hc.job.name)
            except Exception as cleanup_err:  # the config error is what the user must see
                log.debug("run dir left in place: %s", cleanup_err)
        print(f"eve_lightning.train: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    problem = check_group_overrides(sys.argv[1:]) or check_moved_keys(sys.argv[1:])
    if problem:
        print(f"eve_lightning.train: error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
