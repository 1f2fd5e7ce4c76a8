"""Evaluation: the paper's benchmarks from their public files, batched greedy answers, official metrics.

``python -m eve_lightning.eval benchmark=<name> [model=DIR] [data.root=DIR]`` (see ``cli`` and
docs/evaluation.md). Modules: ``metrics`` (pure metric functions), ``base`` (questions, scores, the
``Benchmark`` base class), ``benchmarks.*`` (one module per benchmark family), ``registry`` (names to classes),
``prompts`` (protocol prompts), ``generation`` (batched answers from a model), ``runner`` (batches, resume,
answers JSONL, worker processes), ``cli`` (the Hydra entry point). Benchmark validation during training is the
callback ``eve_lightning.callbacks.benchmark_validation.BenchmarkValidation`` (also importable from here).

Public names are imported lazily, so ``eve_lightning.eval.metrics`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Question": "base",
    "Scores": "base",
    "Benchmark": "base",
    "build_benchmark": "registry",
    "benchmark_names": "registry",
    "register_benchmark": "registry",
    "run_questions": "runner",
    "BatchAnswerer": "generation",
}
_ELSEWHERE = {"BenchmarkValidation": "eve_lightning.callbacks.benchmark_validation"}

__all__ = sorted([*_EXPORTS, *_ELSEWHERE])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
