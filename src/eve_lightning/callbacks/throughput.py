"""Throughput callback: samples/s, tokens/s and an MFU estimate per optimizer step, logged under perf/."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from eve_lightning.utils.flops import decoder_flops_per_token


def numel(p: torch.Tensor) -> int:
    """Full size of a parameter, also when ZeRO-3 has partitioned it away (`ds_numel`)."""
    return int(getattr(p, "ds_numel", p.numel()))


class Throughput(pl.Callback):
    """Logs throughput and memory every optimizer step.

    Metrics: `perf/samples_per_sec`, `perf/tokens_per_sec` (whole job), `perf/mfu` and, on GPU, `perf/peak_mem_gib`.

    Args:
        peak_tflops: dense bf16 peak of one device (A100: 312, H100 SXM: 989); None disables MFU.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._samples = self._tokens = 0
        self._flops = 0.0
        self._llm_params: int | None = None
        self._llm_trained = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = pl_module.last_stats
        self._samples += stats.get("samples", 0)
        self._tokens += stats.get("tokens", 0)
        llm = pl_module.model.vlm.llm
        cfg = llm.config
        if self._llm_params is None:
            self._llm_params = sum(numel(p) for p in llm.parameters()) - numel(llm.get_input_embeddings().weight)
            self._llm_trained = any(p.requires_grad for p in llm.parameters())
        per_token = decoder_flops_per_token(
            self._llm_params, cfg.num_hidden_layers, cfg.hidden_size, stats["seq_len"], self._llm_trained
        )
        self._flops += per_token * stats.get("tokens", 0)
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
