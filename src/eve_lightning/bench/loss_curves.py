"""Compare the training-loss curves of two runs (BF16 against FP8, say) from their CSV metrics.

Usage::

    python -m eve_lightning.bench.loss_curves BASE/metrics.csv OTHER/metrics.csv \
        [--noise AGAIN/metrics.csv] [--metric train/loss] [--tail 100] [--tolerance 0.05] [--window 20] [--skip 20]
        [--out FILE]

The files are Lightning ``CSVLogger`` metrics (``logger=csv``; one row per logged step). Both runs should have
logged the metric at the same steps (same seed, data order and ``trainer.log_every_n_steps``); only the steps both
have are compared. The criterion is where the runs end up: the mean of the metric over the last ``--tail`` common
steps, whose relative gap ``|tail_other - tail_base| / tail_base`` must stay within ``--tolerance``. Along the way,
the gap of the two curves after a moving mean over ``--window`` steps is reported too (its maximum and mean after
the first ``--skip`` steps); where the loss falls steeply a step's lag makes that gap large, so it informs rather
than decides. ``--noise`` names a second run of the base configuration (same seed): the same measures between the
two base runs show how far two runs drift apart without any change (kernel non-determinism), for scale.

The last line printed is JSON; the exit status is 1 when the tail gap exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class CurveError(ValueError):
    """A metrics file that cannot give the curve (missing, no such metric, no common steps)."""


def read_curve(path: str | Path, metric: str = "train/loss") -> dict[int, float]:
    """``step -> value`` of ``metric`` in a CSVLogger ``metrics.csv`` (rows where the metric is empty are skipped).

    Raises:
        CurveError: the file is missing, has no ``step`` or ``metric`` column, or no value of the metric.
    """
    path = Path(path)
    if not path.is_file():
        raise CurveError(f"{path}: no such metrics file (a CSVLogger's metrics.csv; train with logger=csv)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "step" not in columns or metric not in columns:
            raise CurveError(f"{path}: needs the columns 'step' and {metric!r}; it has {', '.join(columns) or 'none'}")
        curve = {int(float(row["step"])): float(row[metric]) for row in reader if row[metric] not in ("", None)}
    if not curve:
        raise CurveError(f"{path}: no value of {metric!r} was logged")
    return curve


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last ``window`` values at each position (fewer at the start): [N] -> [N]."""
    csum = np.cumsum(np.concatenate([[0.0], values]))  # [N + 1]
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (csum[ends] - csum[starts]) / (ends - starts)


def compare(
    base: dict[int, float], other: dict[int, float], window: int = 20, skip: int = 20, tail: int = 100
) -> dict[str, Any]:
    """The gaps between two curves over the steps both logged (see the module's docstring).

    Raises:
        CurveError: fewer than ``max(skip, tail) + 1`` common steps.
    """
    steps = sorted(set(base) & set(other))
    if len(steps) <= max(skip, tail):
        raise CurveError(
            f"{len(steps)} common logged steps; more than --skip {skip} and --tail {tail} are needed to compare"
        )
    a = np.array([base[s] for s in steps])  # [N]
    b = np.array([other[s] for s in steps])  # [N]
    ma, mb = moving_mean(a, window), moving_mean(b, window)  # [N]
    rel = np.abs(mb - ma) / np.abs(ma)  # [N]
    step_rel = np.abs(b - a) / np.abs(a)  # [N]
    worst = skip + int(np.argmax(rel[skip:]))
    tail_a, tail_b = float(a[-tail:].mean()), float(b[-tail:].mean())
    return {
        "tail_mean": [round(tail_a, 5), round(tail_b, 5)],
        "tail_rel_gap": round(abs(tail_b - tail_a) / abs(tail_a), 5),
        "steps": len(steps),
        "first_step": steps[0],
        "last_step": steps[-1],
        "first_loss": [round(float(a[0]), 5), round(float(b[0]), 5)],
        "final_smoothed_loss": [round(float(ma[-1]), 5), round(float(mb[-1]), 5)],
        "max_smoothed_rel_gap": round(float(rel[worst]), 5),
        "max_smoothed_rel_gap_at_step": steps[worst],
        "mean_smoothed_rel_gap": round(float(rel[skip:].mean()), 5),
        "final_smoothed_rel_gap": round(float(rel[-1]), 5),
        "mean_step_rel_gap": round(float(step_rel[skip:].mean()), 5),
    }


def _compare_files(base: dict[int, float], base_path: str, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """``compare`` of the base curve with the one in ``path``; an error names both files."""
    try:
        return compare(base, read_curve(path, args.metric), args.window, args.skip, args.tail)
    except CurveError as err:
        raise CurveError(f"{base_path} against {path}: {err}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.loss_curves", description=__doc__.split("\n")[0])
    p.add_argument("base", help="the baseline run's metrics.csv (e.g. BF16)")
    p.add_argument("other", help="the run to compare (e.g. FP8)")
    p.add_argument("--noise", help="a second run of the baseline (same seed): the gap between two unchanged runs")
    p.add_argument("--metric", default="train/loss")
    p.add_argument("--tail", type=int, default=100, help="the criterion: mean over this many last logged steps")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest allowed relative gap of the tail means")
    p.add_argument("--window", type=int, default=20, help="the curves' moving mean over this many logged steps")
    p.add_argument("--skip", type=int, default=20, help="logged steps the moving-mean gap leaves out at the start")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.window < 1 or args.tail < 1 or args.skip < 0 or not args.tolerance >= 0:
        p.error("--window and --tail must be at least 1, --skip and --tolerance at least 0")
    try:
        base = read_curve(args.base, args.metric)
        result: dict[str, Any] = {"metric": args.metric, "window": args.window, "skip": args.skip}
        result |= _compare_files(base, args.base, args.other, args)
        if args.noise:
            noise = _compare_files(base, args.base, args.noise, args)
            keys = ("tail_mean", "tail_rel_gap", "max_smoothed_rel_gap", "mean_smoothed_rel_gap")
            result["noise"] = {k: noise[k] for k in keys}
    except CurveError as err:
        raise SystemExit(f"eve_lightning.bench.loss_curves: error: {err}") from None
    result["tolerance"] = args.tolerance
    result["within_tolerance"] = result["tail_rel_gap"] <= args.tolerance
    verdict = "within" if result["within_tolerance"] else "OUTSIDE"
    print(
        f"{args.metric}: {result['steps']} common steps; mean of the last {args.tail}: "
        f"{result['tail_mean'][0]:.4f} vs {result['tail_mean'][1]:.4f}, gap {result['tail_rel_gap']:.2%}, "
        f"{verdict} the tolerance {args.tolerance:.2%}; "
        f"moving-mean gap max {result['max_smoothed_rel_gap']:.2%} (step {result['max_smoothed_rel_gap_at_step']}), "
        f"mean {result['mean_smoothed_rel_gap']:.2%}"
        + (
            f"; two baseline runs: tail gap {result['noise']['tail_rel_gap']:.2%}, moving-mean gap max "
            f"{result['noise']['max_smoothed_rel_gap']:.2%}"
            if args.noise
            else ""
        )
    )
    text = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    if not result["within_tolerance"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
