"""Throughput callback: samples/s, tokens/s and an MFU estimate per optimizer step, logged under perf/."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from eve_lightning.models.evev2 import is_vision_parameter
from eve_lightning.utils.flops import step_flops


def numel(p: torch.Tensor) -> int:
    """Full size of a parameter, also when ZeRO-3 has partitioned it away (`ds_numel`)."""
    return int(getattr(p, "ds_numel", p.numel()))


@dataclass(frozen=True)
class DecoderCounts:
    """What the useful FLOP count needs of a decoder, read once from its parameters.

    Attributes:
        params: parameters of one branch without the input embedding and the LM head (EVEv2: without the vision
            copies, which replace text weights for image tokens rather than add to them).
        head: parameters of the LM head (the input embedding's when tied: it still runs).
        layers, hidden: the decoder's depth and width.
        trained: whether the text weights (body or head) get gradients.
        vision_trained: whether the vision copies get gradients; None without vision copies (image tokens run the
            text weights).
    """

    params: int
    head: int
    layers: int
    hidden: int
    trained: bool
    vision_trained: bool | None

    @classmethod
    def of(cls, llm: nn.Module) -> DecoderCounts:
        """Read the counts of an HF causal LM (EVE v1) or EVEv2's routed decoder, ZeRO-3 partitioned or not."""
        embed = llm.get_input_embeddings().weight
        head = llm.get_output_embeddings().weight
        text, vision = [], []
        for name, p in llm.named_parameters():  # a tied head is listed once, as the embedding
            (vision if is_vision_parameter(name) else text).append(p)
        counted = [p for p in text if p is not embed] + ([head] if head is embed else [])  # body and head
        total = sum(numel(p) for p in counted)
        return cls(
            params=total - numel(head),
            head=numel(head),
            layers=int(llm.config.num_hidden_layers),
            hidden=int(llm.config.hidden_size),
            trained=any(p.requires_grad for p in counted),
            vision_trained=any(p.requires_grad for p in vision) if vision else None,
        )

    def flops(self, stats: dict[str, Any]) -> float:
        """Useful decoder FLOPs of one micro-batch from the training module's ``last_stats`` (``step_flops``)."""
        return step_flops(
            self.params,
            self.layers,
            self.hidden,
            stats["tokens"],
            stats["sum_len_sq"],
            self.trained,
            self.head,
            stats["supervised"],
            stats.get("image_tokens", 0),
            self.vision_trained,
        )


class Throughput(pl.Callback):
    """Logs throughput and memory every optimizer step.

    Metrics: `perf/samples_per_sec`, `perf/tokens_per_sec` (whole job), `perf/mfu` and, on GPU, `perf/peak_mem_gib`.

    `perf/mfu` is one rank's useful decoder FLOPs per second over its peak, the convention of
    ``python -m eve_lightning.bench.train``'s `mfu` (``eve_lightning.utils.flops``), so that training and benchmark
    MFUs compare: per micro-batch, 6 FLOPs (4 for frozen weights) x decoder parameters other than the input
    embedding and the LM head x real tokens, + 6 (4) x LM-head parameters x supervised positions, + causal attention
    within each sample, 6 x layers x width x sum of len^2 (x 4/6 when no weight trains). Padding and the row length
    of packed batches count nothing. EVEv2 counts one branch per token (the vision copies are not added): image
    tokens count 6 when the vision copies train, text tokens and the head when the text weights do. The patch
    embedding, projector, aligner and teacher are left out, as in the benchmark.

    Args:
        peak_tflops: dense bf16 peak of one device (A100: 312, H100 SXM: 989); None disables MFU.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._samples = self._tokens = 0
        self._flops = 0.0
        self._decoder: DecoderCounts | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = pl_module.last_stats
        self._samples += stats.get("samples", 0)
        self._tokens += stats.get("tokens", 0)
        if self.peak_tflops:
            if self._decoder is None:  # after configure_model and freezing; the flags hold for the whole fit
                self._decoder = DecoderCounts.of(pl_module.model.vlm.llm)
            self._flops += self._decoder.flops(stats)
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
