"""`python -m eve_lightning.export CKPT OUT`: any EVE weights -> an inference export.

The export (safetensors shards + config + tokenizer) is read by our loader and by transformers-style tooling.
CKPT may be a Lightning `.ckpt`, a DeepSpeed checkpoint folder, a training run folder, an official EVE v1
checkpoint folder or another export. The aligner and the teacher are training-only and are not exported.
OUT must be new or empty; with `--overwrite` the export's own files in it are replaced (each atomically) and every
other file there is kept.

`--copy-experts` (EVEv2): the copy step between stages 0 and 1.0 as a command. The model is rebuilt with vision
experts of every decoder part (q/k/v/o, MLP, both RMSNorms), which take the values of their text weights (the source
may lack them, as a stage-0 export does), and written as a new export:
`python -m eve_lightning.export --copy-experts --dtype float32 runs/evev2_s0/export runs/evev2_s0_copied`.
Training stage 1.0 with `stage.init_copy_experts=true` does the same at start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

from eve_lightning.utils.cli import OneLineArgumentParser


def fail(message: str) -> int:
    """Print one error line on stderr; return the exit status of a usage problem (2)."""
    print(f"eve_lightning.export: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m eve_lightning.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="checkpoint file or folder")
    parser.add_argument("out", help="export folder to write: new or empty (see --overwrite)")
    parser.add_argument(
        "--overwrite", action="store_true", help="OUT holds files: replace the export files in it, keep the rest"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--shard-gb", type=float, default=5.0, help="safetensors shard size in GiB")
    parser.add_argument("--image-size", type=int, choices=[672, 1344], help="only for official checkpoints")
    parser.add_argument(
        "--copy-experts",
        action="store_true",
        help="EVEv2: give the model vision experts of every part, set to copies of the text weights (copy step)",
    )
    args = parser.parse_args(argv)
    if not Path(args.ckpt).exists():
        return fail(
            f"checkpoint {args.ckpt} does not exist: give a .ckpt file, a training run folder, an export or an "
            "official EVE checkpoint folder"
        )
    if not args.shard_gb > 0:
        return fail(f"--shard-gb must be a size in GiB above 0, got {args.shard_gb}")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        return fail(f"{out_dir} is a file: give a folder to write the export into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.overwrite:
        from eve_lightning.models.export_format import export_files

        what = "an earlier export" if export_files(out_dir) else "files this command did not write"
        return fail(
            f"{out_dir} is not empty (it holds {what}): choose a new folder, or pass --overwrite to replace the "
            "export's files in it (other files are kept)"
        )
    import torch  # the checks above need neither torch nor the model code: a typo is refused at once

    from eve_lightning.inference.loading import load_model
    from eve_lightning.models.export_format import save_export

    try:
        loaded = load_model(
            args.ckpt,
            device="cpu",
            dtype=getattr(torch, args.dtype),
            image_size=args.image_size,
            copy_experts=args.copy_experts,
        )
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    tok_source = Path(loaded.tokenizer.source)
    tokenizer_files = [tok_source] if tok_source.is_file() else sorted(tok_source.glob("tokenizer*"))
    out = save_export(
        out_dir.resolve(),  # "." has no name to put a temporary sibling beside
        loaded.vlm,
        tokenizer_files=tokenizer_files,
        extra={
            "exported_from": str(Path(args.ckpt).resolve()),
            "source_kind": loaded.kind,
            "copy_experts": args.copy_experts,
        },
        max_shard_bytes=int(args.shard_gb * 2**30),
        keep_other_files=True,
    )
    n = sum(p.numel() for p in loaded.vlm.parameters())
    copied = " with vision experts copied from the text weights" if args.copy_experts else ""
    print(f"exported {loaded.kind} {args.ckpt} ({n / 1e6:.1f}M parameters, {args.dtype}){copied} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
