"""Test callback: stop training after a given optimizer step (simulates a job killed mid-stage)."""

from __future__ import annotations

import lightning.pytorch as pl


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
