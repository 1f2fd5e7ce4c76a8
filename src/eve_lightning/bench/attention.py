"""Benchmark: causal attention of packed samples, forward + backward, through each kernel PyTorch offers.

One layer's attention over a micro-batch of the training benchmark's samples (``bench.train.draw_samples``: their
token counts), at a decoder's head shape, side by side in one process:

- ``varlen``: ``torch.nn.attention.varlen`` (flash) over the packed stream, the ``torch_varlen`` backend of training;
- ``sdpa_flash`` / ``sdpa_cudnn`` / ``sdpa_efficient``: SDPA with that backend on the samples padded to a common
  length ([samples, heads, length, dim], causal), including the gather into and the scatter out of that layout;
- ``sdpa_cudnn_nested``: SDPA over a nested (jagged) tensor of the samples, where this torch and cuDNN allow it.

Usage (CUDA)::

    python -m eve_lightning.bench.attention --workload pretrain --micro-batch 64 --heads 32 --kv-heads 4 \
        --head-dim 64 --out results/X.json

A kernel this torch or card refuses is reported with its error instead of a time. Outputs are checked against the
``varlen`` kernel's (largest absolute difference of the output and of the query gradient).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

PAD_TO = 64  # padded layouts round the longest sample up to this


def sample_lengths(workload: str, micro_batch: int, seed: int = 0) -> list[int]:
    """Token counts of one micro-batch of the training benchmark's samples."""
    from eve_lightning.bench.train import draw_samples, sample_tokens

    return [sample_tokens(s) for s in draw_samples(workload, micro_batch, np.random.default_rng(seed))]


def padded_index(lengths: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where the packed stream's tokens sit in a [samples, length] padded layout.

    Returns:
        (flat index [T] into samples x length, valid mask [samples, length], length).
    """
    length = -(-max(lengths) // PAD_TO) * PAD_TO
    lens = torch.tensor(lengths, device=device)
    pos = torch.arange(length, device=device)
    valid = pos[None, :] < lens[:, None]  # [S, L]
    flat = valid.reshape(-1).nonzero().squeeze(1)  # [T], in sample order = the stream's order
    return flat, valid, length


def varlen_fn(offsets: torch.Tensor, max_len: int) -> Callable:
    from eve_lightning.models.varlen_attention import _flash

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [T, H, D]
        return _flash(q, k, v, offsets, max_len, q.shape[-1] ** -0.5)

    return run


def padded_fn(backend: SDPBackend, lengths: list[int], gqa: bool, device: torch.device) -> Callable:
    """SDPA with one backend over the samples padded to a common length.

    The gather into that layout and the scatter out of it are timed with the kernel; the index they use is built
    once, outside.
    """
    flat, _, length = padded_index(lengths, device)
    n = len(lengths)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:

        def pad(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [S, H, L, D]
            out = x.new_zeros(n * length, *x.shape[1:])
            out = out.index_copy(0, flat, x)
            return out.view(n, length, *x.shape[1:]).transpose(1, 2)

        qp, kp, vp = pad(q), pad(k), pad(v)
        if not gqa and kp.shape[1] != qp.shape[1]:
            kp, vp = (x.repeat_interleave(qp.shape[1] // x.shape[1], dim=1) for x in (kp, vp))
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(
                qp, kp, vp, is_causal=True, enable_gqa=gqa and kp.shape[1] != qp.shape[1]
            )
        return out.transpose(1, 2).reshape(n * length, *q.shape[1:]).index_select(0, flat)  # [T, H, D]

    return run


def nested_fn(offsets: torch.Tensor) -> Callable:
    """SDPA (cuDNN) over a jagged nested tensor of the samples (key/value heads repeated to the query's)."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        off = offsets.to(torch.int64)
        if k.shape[1] != q.shape[1]:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        qn, kn, vn = (torch.nested.nested_tensor_from_jagged(x, off).transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(qn, kn, vn, is_causal=True)
        return out.transpose(1, 2).values()  # [T, H, D]

    return run


def time_kernel(fn: Callable, q, k, v, grad, iters: int, warmup: int) -> dict[str, Any]:
    """Median milliseconds of forward + backward, and the output and query gradient of one call."""
    times = []
    out = dq = None
    for i in range(warmup + iters):
        qq, kk, vv = (x.detach().requires_grad_(True) for x in (q, k, v))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        o = fn(qq, kk, vv)
        o.backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
        out, dq = o.detach(), qq.grad
    return {"ms": float(np.median(times)), "out": out, "dq": dq}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda")
    lengths = sample_lengths(args.workload, args.micro_batch)
    total = sum(lengths)
    offsets = torch.tensor([0, *np.cumsum(lengths)], device=device, dtype=torch.int32)
    max_len = -(-max(lengths) // 128) * 128
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (total, args.heads, args.head_dim)
    kv_shape = (total, args.kv_heads, args.head_dim)
    q = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(kv_shape, device=device, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(kv_shape, device=device, dtype=torch.bfloat16, generator=gen)
    grad = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    kernels = {
        "varlen": varlen_fn(offsets, max_len),
        "sdpa_flash": padded_fn(SDPBackend.FLASH_ATTENTION, lengths, gqa=True, device=device),
        "sdpa_cudnn": padded_fn(SDPBackend.CUDNN_ATTENTION, lengths, gqa=False, device=device),
        "sdpa_efficient": padded_fn(SDPBackend.EFFICIENT_ATTENTION, lengths, gqa=True, device=device),
        "sdpa_cudnn_nested": nested_fn(offsets),
    }
    # the MFU count's causal attention of one layer (utils.flops): 6 x width x len^2 per sample, forward + backward
    flops = 6 * args.heads * args.head_dim * sum(n * n for n in lengths)
    results: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "workload": args.workload,
        "micro_batch": args.micro_batch,
        "tokens": total,
        "longest": max(lengths),
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "kernels": {},
    }
    base = None
    for name, fn in kernels.items():
        try:
            r = time_kernel(fn, q, k, v, grad, args.iters, args.warmup)
        except Exception as err:  # a kernel this torch or card refuses: reported, not fatal
            results["kernels"][name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(f"{name:>18}: refused ({type(err).__name__}: {str(err)[:160]})", flush=True)
            continue
        if base is None:
            base = r
        entry = {
            "ms": round(r["ms"], 3),
            "tflops": round(flops / r["ms"] / 1e9, 1),
            "max_out_diff": float((r["out"].float() - base["out"].float()).abs().max()),
            "max_dq_diff": float((r["dq"].float() - base["dq"].float()).abs().max()),
        }
        results["kernels"][name] = entry
        print(f"{name:>18}: " + ", ".join(f"{key} {val}" for key, val in entry.items()), flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.attention", description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=["pretrain", "sft"], default="pretrain")
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if not torch.cuda.is_available():
        raise SystemExit("eve_lightning.bench.attention: error: needs a CUDA device")
    results = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results) + "\n")
    return results


if __name__ == "__main__":
    main()
