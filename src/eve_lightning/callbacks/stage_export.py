"""Stage export callback: writes the trained weights for the next stage when fit ends.

The export (safetensors + config + tokenizer) is what the next stage's `init_from` reads; copies can be published
at stable paths (e.g. `runs/demo/latest`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl

from eve_lightning.models.export_format import save_export
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


class StageExport(pl.Callback):
    """Export the trained EveVLM when fit ends.

    Args:
        dirpath: export folder of this run (e.g. `${paths.output_dir}/export`).
        tokenizer_files: tokenizer files copied into the export.
        teacher_args: teacher build arguments recorded in the export; when its `path` is None (a random
            teacher) the teacher weights are stored too, so the next stage aligns to the same teacher.
        publish_to: extra folders that receive a copy (e.g. `runs/demo/prealign`, `runs/demo/latest`).
    """

    def __init__(
        self,
        dirpath: str,
        tokenizer_files: list[str] = (),
        teacher_args: dict | None = None,
        publish_to: list[str] = (),
    ) -> None:
        self.dirpath = dirpath
        self.tokenizer_files = list(tokenizer_files)
        self.teacher_args = teacher_args
        self.publish_to = list(publish_to)
        self.written: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank takes part: sharded strategies gather the full state dict collectively
        full = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
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
            tokenizer_files=self.tokenizer_files,
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
