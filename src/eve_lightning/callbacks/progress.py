"""Progress bar that counts optimizer steps against `trainer.max_steps`.

Training here is bounded by steps, not epochs (`max_epochs` is -1), so Lightning's bar would read "Epoch 0/-2".
This one reads "sft step 12/60 · epoch 0" and keeps Lightning's per-epoch batch bar and metrics.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


def step_description(stage: str, trainer: pl.Trainer) -> str:
    """'<stage> step <done>/<max_steps> · epoch <n>[/<max_epochs>]' (the bounds only where they are set)."""
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    step = f"step {trainer.global_step}" + (f"/{steps}" if steps else "")
    epoch = f"epoch {trainer.current_epoch}" + (f"/{epochs}" if epochs else "")
    return f"{stage} {step} · {epoch}"


class StepProgressBar(RichProgressBar):
    """Rich progress bar described by the optimizer step out of `max_steps` (updated every batch)."""

    def __init__(self, stage: str = "train", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def _get_train_description(self, current_epoch: int) -> str:
        return step_description(self.stage, self.trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None and self.is_enabled:
            self.progress.update(self.train_progress_bar_id, description=step_description(self.stage, trainer))
