"""What a training run tells its user and its loggers: the logged run config, the output paths, the W&B close."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as logged to W&B and CSV (`hparams.yaml`): every key but Hydra's own."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


def finish_wandb(ok: bool) -> None:
    """Close the W&B run (marked failed on error) so multirun jobs never log into each other."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if ok else 1)


def report_outputs(trainer: pl.Trainer, output_dir: str) -> None:
    """Print, on rank 0, where the run dir, the last checkpoint, the stage export and the logger outputs are."""
    if not trainer.is_global_zero:
        return
    lines = [f"run dir:    {output_dir}"]
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
