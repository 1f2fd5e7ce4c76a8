"""Test callback: append each training step's sample keys and loss to the JSONL file named by $STEP_LOG."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl


class StepLog(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._keys = list(batch["meta"]["keys"]) if "meta" in batch else []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {"step": trainer.global_step - 1, "keys": self._keys, "loss": float(loss)}
        with open(os.environ["STEP_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
