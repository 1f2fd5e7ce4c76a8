"""Test callbacks: make a step non-finite at chosen global steps (on chosen ranks only), and report each rank."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import torch


class NanAt(pl.Callback):
    """At ``steps``, on ``ranks`` (None: all): a NaN projector output (``where="loss"``) or gradient (``"grad"``)."""

    def __init__(self, steps: list[int], ranks: list[int] | None = None, where: str = "loss") -> None:
        self.steps = set(steps)
        self.ranks = None if ranks is None else set(ranks)
        self.where = where
        self.handle = None

    def _here(self, trainer) -> bool:
        return trainer.global_step in self.steps and (self.ranks is None or trainer.global_rank in self.ranks)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._remove()
        if self.where == "loss" and self._here(trainer):
            self.handle = pl_module.model.vlm.projector.register_forward_hook(lambda m, a, out: out * float("nan"))

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.where == "grad" and self._here(trainer):  # after DDP's all-reduce: this rank's gradient only
            grad = next(p for p in pl_module.model.parameters() if p.grad is not None).grad
            grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._remove()

    def _remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class RankReport(pl.Callback):
    """At the end of fit, each rank writes its step count, skipped steps and a weight checksum to ``$RANK_REPORT``."""

    def on_train_end(self, trainer, pl_module) -> None:
        params = [p.detach().float() for p in pl_module.model.parameters()]
        report = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "skipped_steps": pl_module.skipped_steps,
            "finite": all(bool(torch.isfinite(p).all()) for p in params),
            "checksum": float(sum(p.double().sum() for p in params)),
        }
        path = f"{os.environ['RANK_REPORT']}.{trainer.global_rank}.json"
        with open(path, "w") as f:
            json.dump(report, f)
