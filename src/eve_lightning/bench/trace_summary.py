"""Where the GPU time of a profiled step goes: a Chrome trace of ``torch.profiler`` summed by kernel kind.

``python -m eve_lightning.bench.train ... --profile DIR`` writes ``DIR/trace_<path>.json`` (3 optimizer steps).
This reads such a trace and prints, per step: the GPU's span (first kernel start to last kernel end), how long at
least one kernel ran (busy) and the idle rest, and the kernel time of each kind (matrix products in BF16 and in
FP8, attention, the optimizer, FP8 scaling casts, other compiled kernels, copies), with the largest kernels:

    python -m eve_lightning.bench.trace_summary DIR/trace_ours.json --steps 3 [--json OUT.json]

A kernel's kind comes from its name (``KINDS``: the first pattern that matches, in order); the table of the largest
kernels shows each one's kind, so a name that lands in the wrong bucket is visible.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # the trace's GPU-side events

# (kind, pattern on the kernel name, case-insensitive); the first match wins
KINDS = (
    ("attention", r"flash|fmha|attention|attn"),  # before the matmuls: flash kernels name their cutlass types
    ("matmul_fp8", r"(gemm|xmma|cutlass).*(e4m3|e5m2|f8)|nvjet_sm\d+_q[qr]"),  # cuBLAS: q = e4m3, r = e5m2
    ("matmul", r"gemm|nvjet|xmma|cutlass|wgmma|cublas|sm90_|sm80_|ampere_"),
    ("optimizer", r"adam|multi_tensor"),
    ("fp8_scale_cast", r"^triton.*(amax|abs_max|float8|fp8|_e4m3|_e5m2)|AbsMaxOps"),  # AbsMaxOps: models.fp8.abs_max
    ("compiled_fused", r"^triton_"),
    ("copy_cast", r"memcpy|memset|copy|(?<!no)cast"),  # not ATen's "gpu_kernel_impl_nocast" arithmetic
    ("nccl", r"nccl"),
)
OTHER = "other"


def kind_of(name: str) -> str:
    """The kind of a kernel by its name (``KINDS``), ``other`` when no pattern matches."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return OTHER


def gpu_events(trace: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(start us, duration us, name) of every GPU kernel, copy and memset of a Chrome trace."""
    out = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("cat") in GPU_CATEGORIES and "dur" in ev:
            out.append((float(ev["ts"]), float(ev["dur"]), str(ev.get("name", ""))))
    return out


def busy_time(events: list[tuple[float, float, str]]) -> float:
    """Microseconds during which at least one event ran (overlaps across streams counted once)."""
    total, end = 0.0, float("-inf")
    for start, dur, _ in sorted(events):
        stop = start + dur
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarize(events: list[tuple[float, float, str]], steps: int, top: int = 15) -> dict[str, Any]:
    """Per-step milliseconds: span, busy, idle, kernel time by kind (with its share of busy), and the top kernels.

    Raises:
        ValueError: no GPU events (a trace of a CPU run), or ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not events:
        raise ValueError("the trace has no GPU kernels: profile a CUDA run (bench.train --profile on a GPU)")
    span = max(s + d for s, d, _ in events) - min(s for s, _, _ in events)
    busy = busy_time(events)
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for _, dur, name in events:
        by_kind[kind_of(name)] += dur
        by_name[name][0] += dur
        by_name[name][1] += 1
    per_step = 1e-3 / steps  # us over all steps -> ms per step
    kernel_total = sum(by_kind.values())
    return {
        "steps": steps,
        "span_ms": span * per_step,
        "busy_ms": busy * per_step,
        "idle_ms": (span - busy) * per_step,
        "kernel_ms": kernel_total * per_step,
        "kinds": {
            k: {"ms": v * per_step, "share": v / kernel_total}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"name": n, "kind": kind_of(n), "ms": t * per_step, "calls_per_step": c / steps}
            for n, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
        ],
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a text table."""
    lines = [
        f"per step ({s['steps']} steps): span {s['span_ms']:.1f} ms, GPU busy {s['busy_ms']:.1f} ms, "
        f"idle {s['idle_ms']:.1f} ms ({s['idle_ms'] / s['span_ms']:.1%}); kernels {s['kernel_ms']:.1f} ms",
        f"{'kind':<16}{'ms/step':>10}{'share':>8}",
    ]
    lines += [f"{k:<16}{v['ms']:>10.2f}{v['share']:>8.1%}" for k, v in s["kinds"].items()]
    lines.append(f"{'ms/step':>9} {'calls':>6}  {'kind':<15} kernel")
    lines += [f"{t['ms']:>9.2f} {t['calls_per_step']:>6.0f}  {t['kind']:<15} {t['name'][:110]}" for t in s["top"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.trace_summary", description=__doc__.split("\n")[0])
    p.add_argument("trace", help="Chrome trace JSON written by torch.profiler (bench.train --profile)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps in the trace (bench.train profiles 3)")
    p.add_argument("--top", type=int, default=15, help="largest kernels to list")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    path = Path(args.trace)
    if not path.is_file():
        p.error(f"no trace file at {path}")
    try:
        trace = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        p.error(f"{path} is not a JSON trace ({err}); a profile cut short leaves an incomplete file")
    try:
        summary = summarize(gpu_events(trace), args.steps, args.top)
    except ValueError as err:
        p.error(f"{path}: {err}")
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
