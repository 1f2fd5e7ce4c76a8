"""Stage export callback: writes the trained weights for the next stage when fit ends.

The export (safetensors + config + tokenizer) is what the next stage's `init_from` reads; copies can be published
at stable paths (e.g. `runs/demo/latest`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch

from eve_lightning.data.tokenizer import tokenizer_files
from eve_lightning.models.export_format import save_export
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def full_state_dict(trainer: pl.Trainer, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The module's whole state dict on global rank 0, None on the other ranks; every rank must call it.

    FSDP (full state dict type) and DDP give it through the strategy. Under DeepSpeed ZeRO-3 the module's own
    ``state_dict()`` holds empty partitions, so each parameter is gathered in turn (one at a time: no rank ever
    holds the whole model twice).
    """
    if getattr(trainer.strategy, "zero_stage_3", False):
        return zero3_state_dict(module, keep=trainer.is_global_zero)
    full = trainer.strategy.lightning_module_state_dict()
    return full if trainer.is_global_zero else None


def zero3_state_dict(module: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """Full CPU copies of a ZeRO-3-partitioned module's state (None unless ``keep``); collective over all ranks."""
    import deepspeed

    params = dict(module.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        param = params.get(key)
        if param is not None and hasattr(param, "ds_id"):  # partitioned: gather, copy, let go
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if keep:
                    out[key] = param.detach().cpu().clone()
        elif keep:
            out[key] = value.detach().cpu().clone()
    return out if keep else None


class StageExport(pl.Callback):
    """Export the trained EveVLM when fit ends.

    Args:
        dirpath: export folder of this run (e.g. `${paths.output_dir}/export`).
        tokenizer_files: tokenizer files copied into the export; None = those of the DataModule's tokenizer
            (`tokenizer_source`), found when fit starts.
        teacher_args: teacher build arguments recorded in the export (the config's `model.teacher`); when its
            `path` is None (a random teacher) the teacher weights are stored too, so the next stage aligns to the
            same teacher.
        publish_to: folders that receive a copy (e.g. `runs/demo/prealign`, `runs/demo/latest`), with `publish`.
        publish: copy to `publish_to` (the config's `publish=true`); off, nothing outside the run dir is written.
    """

    def __init__(
        self,
        dirpath: str,
        tokenizer_files: list[str] | None = None,
        teacher_args: dict | None = None,
        publish_to: list[str] = (),
        publish: bool = False,
    ) -> None:
        self.dirpath = dirpath
        self.tokenizer_files = None if tokenizer_files is None else list(tokenizer_files)
        self.teacher_args = teacher_args
        self.publish_to = list(publish_to) if publish else []
        self.written: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.tokenizer_files is None:
            self.tokenizer_files = tokenizer_files(getattr(trainer.datamodule, "tokenizer_source", None))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        full = full_state_dict(trainer, pl_module)  # every rank takes part: sharded weights are gathered
        if full is None:  # not global rank 0
            return
        vlm_state = {k.removeprefix("model.vlm."): v for k, v in full.items() if k.startswith("model.vlm.")}
        teacher_state = None
        if pl_module.model.teacher is not None and (self.teacher_args or {}).get("path") is None:
            teacher_state = {
                k.removeprefix("model.teacher."): v for k, v in full.items() if k.startswith("model.teacher.")
            }
        out = save_export(
            self.dirpath,
            pl_module.model.vlm,
            state=vlm_state,
            teacher_state=teacher_state,
            teacher_args=self.teacher_args,
            tokenizer_files=self.tokenizer_files or [],
            stage=pl_module.hparams.stage["name"],
            extra={"global_step": trainer.global_step},
        )
        self.written = out
        for target in self.publish_to:
            target = Path(target)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out, tmp)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(target)
        log.info("stage export: %s%s", out, "".join(f"\n  published: {p}" for p in self.publish_to))
