"""Test callback: make the projector output NaN for the first sample of the batch at chosen global steps."""

from __future__ import annotations

import lightning.pytorch as pl


class NanAt(pl.Callback):
    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self.handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if trainer.global_step in self.steps:
            self.handle = pl_module.model.vlm.projector.register_forward_hook(lambda m, a, out: out * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
