"""`ModelCheckpoint` whose `last.ckpt` always holds the last step trained.

Lightning writes `last.ckpt` only together with a step checkpoint (every `every_n_train_steps`), and at the end of
training only if no `last.ckpt` was ever written: a run of 70 steps saving every 30 ends with `last.ckpt` at step
60. This subclass also writes it when training ends past the last save, so `ckpt_path=last` and the export read
the same step.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class LastStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) that also saves `last.ckpt` at the final step of a fit."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.global_step == 0 or self._should_skip_saving_checkpoint(trainer):
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
