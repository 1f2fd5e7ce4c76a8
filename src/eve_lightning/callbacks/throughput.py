"""Throughput callback: samples/s, tokens/s and an MFU estimate per optimizer step, logged under perf/."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from eve_lightning.utils.flops import DecoderParams
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)

STAT_KEYS = ("tokens", "sum_len_sq", "supervised")  # the per-batch totals the FLOP count needs


def batch_flops(decoder: DecoderParams, stats: dict[str, Any]) -> float:
    """Useful decoder FLOPs of one micro-batch from the training module's ``last_stats`` (``DecoderParams.flops``).

    Stats without the totals (no step recorded yet) count nothing.
    """
    if any(key not in stats for key in STAT_KEYS):
        return 0.0
    return decoder.flops(stats["tokens"], stats["sum_len_sq"], stats["supervised"], stats.get("image_tokens", 0))


class Throughput(pl.Callback):
    """Logs throughput and memory every optimizer step.

    Metrics: `perf/samples_per_sec`, `perf/tokens_per_sec` (whole job), `perf/mfu` and, on GPU, `perf/peak_mem_gib`.

    `perf/mfu` is one rank's useful decoder FLOPs per second over its peak, the convention of
    ``python -m eve_lightning.bench.train``'s `mfu` (``eve_lightning.utils.flops``), so that training and benchmark
    MFUs compare: per micro-batch, 6 FLOPs x trained and 4 x frozen decoder parameters other than the input
    embedding and the LM head x real tokens, + 6 (4 when frozen) x LM-head parameters x supervised positions, +
    causal attention within each sample, 6 x layers x width x sum of len^2 (x 4/6 when no decoder weight trains).
    Padding and the row length of packed batches count nothing. EVEv2 counts one branch per token (the vision copies
    are not added): image tokens run the vision copies, text tokens the text weights, each parameter at 6 or 4 as
    it trains. The patch embedding, projector, aligner and teacher are left out, as in the benchmark.

    The parameter counts are the training module's ``decoder_params`` (``utils.flops.DecoderParams``), taken when it
    built the model: before FSDP shards it, whole under ZeRO-3. A module without them logs no `perf/mfu`. A
    micro-batch whose stats lack the totals counts no FLOPs.

    Args:
        peak_tflops: dense bf16 peak of one device (A100: 312, H100 SXM: 989); None disables MFU.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._samples = self._tokens = 0
        self._flops = 0.0
        self._decoder: DecoderParams | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = pl_module.last_stats
        self._samples += stats.get("samples", 0)
        self._tokens += stats.get("tokens", 0)
        if self.peak_tflops and self._decoder is None:
            self._decoder = getattr(pl_module, "decoder_params", None)  # taken in configure_model, after freezing
            if self._decoder is None:
                log.warning("perf/mfu is not logged: %s has no decoder_params", type(pl_module).__name__)
                self.peak_tflops = None
        if self.peak_tflops:
            self._flops += batch_flops(self._decoder, stats)
        if not trainer.fit_loop._should_accumulate():
            self._sync()
            elapsed = time.perf_counter() - self._t0
            world = trainer.world_size
            metrics = {
                "perf/samples_per_sec": self._samples * world / elapsed,
                "perf/tokens_per_sec": self._tokens * world / elapsed,
            }
            if self.peak_tflops:
                metrics["perf/mfu"] = self._flops / elapsed / (self.peak_tflops * 1e12)
            if torch.cuda.is_available():
                metrics["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            pl_module.log_dict(metrics, batch_size=1)
            self._t0 = time.perf_counter()
            self._samples = self._tokens = 0
            self._flops = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
