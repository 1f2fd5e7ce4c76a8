"""The earlier import path of the benchmark validation callback, kept so configs that name it keep working.

``_target_: eve_lightning.eval.callback.BenchmarkValidation`` builds
``eve_lightning.callbacks.benchmark_validation.BenchmarkValidation``, the same class.
"""

from eve_lightning.callbacks.benchmark_validation import BenchmarkValidation, spread

__all__ = ["BenchmarkValidation", "spread"]
