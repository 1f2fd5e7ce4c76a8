"""Benchmark validation during training: ``val/<benchmark>/<metric>`` every N optimizer steps.

Every N steps a small benchmark slice is answered by the model being trained and its metrics are logged to the
trainer's loggers (W&B, CSV) and put into ``trainer.callback_metrics``.

The slice is fixed for the whole run (``limit`` questions spread evenly over the benchmark, groups kept whole), so
the curves compare like with like. Answers are greedy, batched, in eval mode and under the trainer's precision
context; training mode is restored afterwards. With several ranks each answers its share and the answers are
gathered before scoring. Sharded-parameter strategies (FSDP, DeepSpeed ZeRO-3) are not supported: the callback
says so once and stays idle.

Enable it with a ``callbacks`` entry (see docs/evaluation.md)::

    benchmark_val: {_target_: eve_lightning.callbacks.benchmark_validation.BenchmarkValidation, benchmark: demo,
                    root: "${paths.data_dir}/demo", template: "${stage.template}", every_n_steps: 30, limit: 32}

Configs written for the earlier path ``eve_lightning.eval.callback.BenchmarkValidation`` still work: that module
names this class.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from eve_lightning.eval.base import Benchmark, BenchmarkDataError, Question
from eve_lightning.eval.generation import BatchAnswerer
from eve_lightning.eval.registry import build_benchmark
from eve_lightning.inference.engine import ChatEngine
from eve_lightning.inference.loading import LoadedModel
from eve_lightning.models.compile import eager_generation
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def spread(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """``limit`` questions spread evenly over ``questions``, plus the rest of their groups."""
    if limit is None or limit >= len(questions):
        return list(questions)
    step = len(questions) / limit
    keep = {questions[int(i * step)].group or questions[int(i * step)].qid for i in range(limit)}
    return [q for q in questions if (q.group or q.qid) in keep]


def _sharded(strategy: Any) -> bool:
    """FSDP and DeepSpeed ZeRO-3 hold a shard of each parameter per rank: no plain forward outside the engine."""
    if "FSDP" in type(strategy).__name__ or "ModelParallel" in type(strategy).__name__:
        return True
    config = getattr(strategy, "config", None)
    return isinstance(config, dict) and config.get("zero_optimization", {}).get("stage") == 3


class BenchmarkValidation(pl.Callback):
    """Log ``val/<name>/<metric>`` of a benchmark slice every ``every_n_steps`` optimizer steps.

    Args:
        benchmark: registry name (``demo``, ``pope``, ``gqa`` ...).
        root: the benchmark's files (``data.root`` of the eval CLI; the demo data: ``${paths.data_dir}/demo``).
        every_n_steps: optimizer steps between evaluations.
        limit: questions per evaluation (spread over the benchmark; groups stay whole). None = all.
        batch_size: questions per generation call.
        max_new_tokens: answer length limit.
        template: chat template of the prompts (``${stage.template}`` follows the stage: ``plain`` stages get the
            image alone and answer with a caption; for the demo benchmark they then use only its caption part).
        options: benchmark options (the ``benchmark:`` node of conf/benchmark/<name>.yaml without ``name``).
        metrics: metric names to log (None = every metric of the benchmark).
        name: the ``<name>`` in the logged keys (default: the benchmark name).
        at_train_end: also evaluate after the last step when it was not just evaluated.
        threads: image reading threads.
    """

    def __init__(
        self,
        benchmark: str = "demo",
        root: str | None = None,
        every_n_steps: int = 500,
        limit: int | None = 64,
        batch_size: int = 8,
        max_new_tokens: int = 32,
        template: str = "vicuna_v1",
        options: dict[str, Any] | None = None,
        metrics: Sequence[str] | None = None,
        name: str | None = None,
        at_train_end: bool = True,
        threads: int = 2,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.benchmark_name = benchmark
        self.root = root
        self.every_n_steps = every_n_steps
        self.limit = limit
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.template = template
        self.options = dict(options or {})
        if template == "plain" and benchmark == "demo":
            self.options.setdefault("parts", ["captions"])  # plain prompts carry no question text
        self.metrics = list(metrics) if metrics else None
        self.name = name or benchmark
        self.at_train_end = at_train_end
        self.threads = threads
        self.bench: Benchmark | None = None
        self.questions: list[Question] | None = None
        self.disabled = False
        self.last_step = -1
        self.history: list[tuple[int, dict[str, float]]] = []

    def _load(self) -> bool:
        if self.questions is not None:
            return True
        if self.root is None:
            raise ValueError("BenchmarkValidation needs root= (the benchmark's data folder)")
        try:
            self.bench = build_benchmark(self.benchmark_name, self.root, self.options)
            self.questions = spread(self.bench.load(), self.limit)
        except BenchmarkDataError as err:
            log.warning("benchmark validation off: %s", err)
            self.disabled = True
            return False
        n, every = len(self.questions), self.every_n_steps
        log.info("benchmark validation: %d %s questions every %d steps", n, self.name, every)
        return True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _sharded(trainer.strategy):
            log.warning("benchmark validation off: %s shards parameters", type(trainer.strategy).__name__)
            self.disabled = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end and trainer.global_step != self.last_step:
            self.run(trainer, pl_module)

    def _answer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
        vlm = pl_module.model.vlm if hasattr(pl_module, "model") else pl_module.vlm
        tokenizer = trainer.datamodule.tokenizer
        loaded = LoadedModel(vlm, tokenizer, vlm.config.image_size, kind="training", source="training")
        answerer = BatchAnswerer(ChatEngine(loaded, self.template), self.max_new_tokens, threads=self.threads)
        mine = self.questions[trainer.global_rank :: trainer.world_size]
        modes = {m: m.training for m in vlm.modules()}
        precision = getattr(trainer.strategy, "precision_plugin", None)
        context = precision.forward_context() if precision is not None else contextlib.nullcontext()
        answers: dict[str, str] = {}
        vlm.eval()
        try:
            with context, torch.no_grad(), eager_generation(vlm.llm):
                for start in range(0, len(mine), self.batch_size):
                    batch = mine[start : start + self.batch_size]
                    answers.update(zip([q.qid for q in batch], answerer(batch)))
        finally:
            for module, mode in modes.items():
                module.train(mode)
            answerer.close()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, str] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, answers)
            answers = {k: v for part in gathered for k, v in (part or {}).items()}
        return answers

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Evaluate the slice now and log the metrics; returns them (empty when the callback is off)."""
        self.last_step = trainer.global_step
        if self.disabled or not self._load():
            return {}
        started = time.perf_counter()
        answers = self._answer(trainer, pl_module)
        scores = self.bench.score(self.questions, answers)
        values = {k: float(v) for k, v in scores.metrics.items() if self.metrics is None or k in self.metrics}
        logged = {f"val/{self.name}/{k}": v for k, v in values.items()}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in logged.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=trainer.global_step)
            log.info("step %d %s: %s (%.1f s)", trainer.global_step, self.name, values, time.perf_counter() - started)
        self.history.append((trainer.global_step, values))
        return values
