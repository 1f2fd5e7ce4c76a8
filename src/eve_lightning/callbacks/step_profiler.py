"""StepProfiler callback: a torch.profiler trace of a few optimizer steps of a real run (``debug=profile``).

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
    """Profile optimizer steps ``start_step`` to ``start_step + steps - 1`` of this fit, counted from its start.

    Steps are counted by this callback from the start of the fit (not by batch index, which restarts each epoch,
    nor by the global step, which a resumed run starts high), and each step spans all its accumulation
    micro-batches, so the window holds whole optimizer steps with their gradient synchronisation.

    Args:
        out_dir: where the trace and the operator table go.
        start_step: first profiled optimizer step (leave time for compilation and loader warm-up).
        steps: profiled optimizer steps.
        rows: operators in the table.
    """

    def __init__(self, out_dir: str, start_step: int = 20, steps: int = 3, rows: int = 30) -> None:
        if steps < 1 or start_step < 0:
            raise ValueError(f"StepProfiler needs steps >= 1 and start_step >= 0, got {steps} and {start_step}")
        self.out_dir = Path(out_dir)
        self.start_step, self.steps, self.rows = start_step, steps, rows
        self.profiler: torch.profiler.profile | None = None
        self.done = False
        self.batches = 0  # micro-batches seen in this fit
        self.profiled = 0  # micro-batches inside the window

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches = self.profiled = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        at_step_start = self.batches % accumulate == 0
        if not self.done and self.profiler is None and at_step_start and self.batches // accumulate >= self.start_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        self.batches += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.profiler is None:
            return
        self.profiled += 1
        if self.profiled >= self.steps * max(1, int(trainer.accumulate_grad_batches)):
            self._finish(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.profiler is not None:  # the run ended inside the window
            self._finish(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.profiler is not None:  # keep what was traced up to the failure
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
        log.info("profiled %d micro-batches (%d optimizer steps): %s", self.profiled, self.steps, trace)
