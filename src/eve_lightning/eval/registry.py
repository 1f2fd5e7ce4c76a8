"""Benchmark registry: names (the ``conf/benchmark/<name>.yaml`` files) to ``Benchmark`` classes.

Built-in benchmarks are imported on first use; ``register_benchmark`` adds a user's own class.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from eve_lightning.eval.base import Benchmark

_BUILTIN = {
    "demo": "demo:DemoBenchmark",
    "vqav2": "vqa:VQAv2",
    "vizwiz": "vqa:VizWiz",
    "textvqa": "vqa:TextVQA",
    "gqa": "gqa:GQA",
    "pope": "pope:POPE",
    "mme": "mme:MME",
    "scienceqa": "scienceqa:ScienceQA",
    "mmbench": "mmbench:MMBench",
    "seed": "seed:SEEDBench",
    "mmvet": "mmvet:MMVet",
}
_REGISTERED: dict[str, type[Benchmark]] = {}


class UnknownBenchmarkError(ValueError):
    """A benchmark name or option that does not exist; the message lists the valid ones."""


def benchmark_names() -> list[str]:
    """Every benchmark name, built-in and registered."""
    return sorted({*_BUILTIN, *_REGISTERED})


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Add a ``Benchmark`` dataclass under ``cls.name`` (usable as a decorator)."""
    if not cls.name or not dataclasses.is_dataclass(cls):
        raise ValueError("a benchmark is a Benchmark dataclass with a name")
    if cls.name in _BUILTIN or cls.name in _REGISTERED:
        raise ValueError(f"benchmark {cls.name!r} already exists")
    _REGISTERED[cls.name] = cls
    return cls


def get_benchmark_class(name: str) -> type[Benchmark]:
    """The class of a benchmark name."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}: use one of {', '.join(benchmark_names())}")
    module, cls = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(f"eve_lightning.eval.benchmarks.{module}"), cls)


def build_benchmark(name: str, root: str, options: Mapping[str, Any] | None = None) -> Benchmark:
    """Instantiate a benchmark from its options (the ``benchmark:`` config node without ``name``).

    Raises:
        UnknownBenchmarkError: the name or an option does not exist (the message lists the valid options).
    """
    cls = get_benchmark_class(name)
    options = dict(options or {})
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UnknownBenchmarkError(f"benchmark {name} has no option {', '.join(unknown)}: options are {valid}")
    for key, value in options.items():
        if isinstance(value, list):
            options[key] = tuple(value) if key == "parts" else list(value)
    return cls(root=str(root), **options)
