r"""Benchmark: how fast the demo data generator writes a set, through the call the DataModule makes.

Usage::

    python -m eve_lightning.bench.demo_data --samples 308000 --workers 16 --out /tmp/demo_bench

``--samples`` counts every sample generated, split as the demo recipe splits it: 400 held-out samples per task
(fewer for small counts) and the rest shared by the pretraining and SFT training splits (308000 is the recipe's
153600 per task + 2 x 400). The content options are the recipe's (``conf/experiment/demo_recipe.yaml``). The
generation runs without the cache; ``--cache DIR`` then also times a second call that takes the set from a cache
in ``DIR`` (generate + store, then restore). The last line printed is JSON:
``{"samples": N, "workers": W, "seconds": S, "samples_per_s": R, "cpu_seconds": C, "cpu_ms_per_sample": M,
"cpu_busy": B, ...}``. ``cpu_seconds`` is the user + system time of this process and its worker processes during
the generation; ``cpu_busy`` is that over ``seconds x workers`` (the workers asked for). Together they tell slow
cores (many CPU ms per sample, busy near 1) from workers that wait (few CPU ms per sample, busy well below 1: disk,
memory, a serial step).

The same timing without this module (for code that predates it; run with ``PYTHONPATH`` at that code's ``src``)::

    python -c "import os,time; from eve_lightning.data import synthetic_shapes as s; n=153600; \
    t=time.perf_counter(); s.generate('/tmp/demo_bench', num_pretrain=n, num_sft=n, num_val=400, seed=0, \
    max_side=672, max_turns=10, turns='independent', shuffled_captions=0.5, answers='restated', \
    shape_first_captions=0.5, workers=os.cpu_count() or 1, overwrite=True); dt=time.perf_counter()-t; \
    print(f'{2*n+800} samples in {dt:.1f} s: {(2*n+800)/dt:.0f} samples/s')"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eve_lightning.data import synthetic_shapes

# The demo recipe's content options (conf/experiment/demo_recipe.yaml, data.synthetic.*).
RECIPE_CONTENT = {
    "max_turns": 10,
    "turns": "independent",
    "shuffled_captions": 0.5,
    "answers": "restated",
    "shape_first_captions": 0.5,
}
HELD_OUT = 400  # held-out samples per task in the recipe


def recipe_params(samples: int, max_side: int = 672) -> dict[str, Any]:
    """``generate``'s keyword arguments for ``samples`` samples in all, split as the recipe splits them."""
    held_out = min(HELD_OUT, samples // 20)
    per_task = (samples - 2 * held_out) // 2
    if per_task < 1:
        raise ValueError(f"--samples must be at least 4 (two training and two held-out samples), got {samples}")
    return dict(num_pretrain=per_task, num_sft=per_task, num_val=held_out, seed=0, max_side=max_side, **RECIPE_CONTENT)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(out: Path, params: dict[str, Any], workers: int, cache: str | Path | bool) -> tuple[float, float]:
    """Wall and CPU seconds of one ``generate`` call (the DataModule's call: every worker, overwrite).

    The CPU seconds include the worker processes: ``generate`` ends its pool before it returns.
    """
    start, cpu = time.perf_counter(), cpu_seconds()
    synthetic_shapes.generate(out, **params, workers=workers, overwrite=True, cache=cache)
    return time.perf_counter() - start, cpu_seconds() - cpu


def run(
    samples: int, workers: int, out: Path, cache: Path | None = None, max_side: int = 672, clean: bool = False
) -> dict[str, Any]:
    """Time the generation (and the cache, with ``cache``); ``clean``: delete ``out`` and the cache entry after."""
    if not synthetic_shapes.owns_folder(out):
        raise SystemExit(f"{out} holds files the demo generator did not write: give a new or empty folder as --out")
    params = recipe_params(samples, max_side)
    try:
        return _measure(out, params, workers, cache)
    finally:
        if clean:
            shutil.rmtree(out, ignore_errors=True)
            if cache is not None:
                record = synthetic_shapes.generation_params(**params)
                entry = synthetic_shapes.DemoCache.open(cache, record, synthetic_shapes.SHARD_SIZE)
                shutil.rmtree(entry.entry, ignore_errors=True)


def _measure(out: Path, params: dict[str, Any], workers: int, cache: Path | None) -> dict[str, Any]:
    total = params["num_pretrain"] + params["num_sft"] + 2 * params["num_val"]
    cold, cpu = timed(out, params, workers, cache=False)
    busy = cpu / (cold * max(1, workers))  # over the processes asked for (fewer run for a set of few shards)
    result: dict[str, Any] = {
        "samples": total,
        "workers": workers,
        "cpus": os.cpu_count(),
        "max_side": params["max_side"],
        "seconds": round(cold, 2),
        "samples_per_s": round(total / cold, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_sample": round(1000 * cpu / total, 3),
        "cpu_busy": round(busy, 3),
    }
    print(
        f"{total} samples, {workers} workers ({os.cpu_count()} CPUs): {cold:.1f} s, {total / cold:.0f} samples/s; "
        f"CPU {cpu:.1f} s ({1000 * cpu / total:.2f} ms per sample), workers busy {busy:.0%} of the time"
    )
    if cache is not None:
        store, _ = timed(out, params, workers, cache=cache)  # generated again, then kept in the cache
        shutil.rmtree(out)
        restore, _ = timed(out, params, workers, cache=cache)
        result.update(cache_store_seconds=round(store, 2), cache_restore_seconds=round(restore, 2))
        print(f"with the cache in {cache}: generate + store {store:.1f} s, then restore {restore:.1f} s")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.demo_data", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=308000, help="samples in all (308000: the demo recipe's set)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (the DataModule: all CPUs)")
    p.add_argument("--out", type=Path, required=True, help="folder to generate into (new, or a demo set's own)")
    p.add_argument("--max-side", type=int, default=672, choices=(672, 1344), help="image size of the shards")
    p.add_argument("--cache", type=Path, default=None, help="also time storing into and restoring from this cache")
    p.add_argument("--clean", action="store_true", help="delete --out and the cache entry afterwards")
    args = p.parse_args(argv)
    result = run(args.samples, args.workers, args.out, args.cache, args.max_side, args.clean)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
