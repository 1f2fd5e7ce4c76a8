"""StepProfiler callback: a torch.profiler trace of a few training steps of a real run (``debug=profile``).

Writes ``<out_dir>/trace_rank<r>.json`` (open in chrome://tracing or Perfetto) and ``top_ops_rank<r>.txt``, the
operators with the most device time (CPU time without a GPU), so the time a run spends outside the model step
(data waits, host syncs, logging, validation) shows next to the kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


class StepProfiler(pl.Callback):
    """Profile training batches ``start_step`` to ``start_step + steps - 1`` (batch indices, after warm-up).

    Args:
        out_dir: where the trace and the operator table go.
        start_step: first profiled batch (leave time for compilation and loader warm-up).
        steps: profiled batches.
        rows: operators in the table.
    """

    def __init__(self, out_dir: str, start_step: int = 20, steps: int = 3, rows: int = 30) -> None:
        if steps < 1 or start_step < 0:
            raise ValueError(f"StepProfiler needs steps >= 1 and start_step >= 0, got {steps} and {start_step}")
        self.out_dir = Path(out_dir)
        self.start_step, self.steps, self.rows = start_step, steps, rows
        self.profiler: torch.profiler.profile | None = None
        self.done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.done or self.profiler is not None or idx < self.start_step:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()
        self.first = idx

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.profiler is not None and idx - self.first + 1 >= self.steps:
            self._finish(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.profiler is not None:  # the run ended inside the window
            self._finish(trainer)

    def _finish(self, trainer: pl.Trainer) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prof, self.profiler, self.done = self.profiler, None, True
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        trace = self.out_dir / f"trace_rank{rank}.json"
        prof.export_chrome_trace(str(trace))
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=self.rows)
        (self.out_dir / f"top_ops_rank{rank}.txt").write_text(table)
        log.info("profiled %d training batches: %s", self.steps, trace)
