"""`python -m eve_lightning.export CKPT OUT`: any EVE weights -> an inference export.

The export (safetensors shards + config + tokenizer) is read by our loader and by transformers-style tooling.
CKPT may be a Lightning `.ckpt`, a DeepSpeed checkpoint folder, a training run folder, an official EVE v1
checkpoint folder or another export. The aligner and the teacher are training-only and are not exported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from eve_lightning.inference.loading import load_model
from eve_lightning.models.export_format import save_export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eve_lightning.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="checkpoint file or folder")
    parser.add_argument("out", help="export folder to write (replaced if it exists)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--shard-gb", type=float, default=5.0, help="safetensors shard size in GiB")
    parser.add_argument("--image-size", type=int, choices=[672, 1344], help="only for official checkpoints")
    args = parser.parse_args(argv)
    try:
        loaded = load_model(args.ckpt, device="cpu", dtype=getattr(torch, args.dtype), image_size=args.image_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"eve_lightning.export: error: {err}", file=sys.stderr)
        return 2
    tok_source = Path(loaded.tokenizer.source)
    tokenizer_files = [tok_source] if tok_source.is_file() else sorted(tok_source.glob("tokenizer*"))
    out = save_export(
        args.out,
        loaded.vlm,
        tokenizer_files=tokenizer_files,
        extra={"exported_from": str(Path(args.ckpt).resolve()), "source_kind": loaded.kind},
        max_shard_bytes=int(args.shard_gb * 2**30),
    )
    n = sum(p.numel() for p in loaded.vlm.parameters())
    print(f"exported {loaded.kind} {args.ckpt} ({n / 1e6:.1f}M parameters, {args.dtype}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
