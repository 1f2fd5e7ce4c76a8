r"""Shard writer: LLaVA / caption annotations plus an image folder -> WebDataset tar shards with an index.

Usage::

    python -m eve_lightning.data.make_shards --format llava --annotations llava_v1_5_mix665k.json \
        --images /data/llava --out /data/shards/llava_665k --max-side 672 --workers 16

Writes ``shard-000000.tar ...``, one ``shard-XXXXXX.idx.json`` sidecar per shard (keys, byte offsets, modality,
word counts, image sizes), ``index.json`` (per-shard counts and totals, skip counts) and ``skipped.jsonl`` (one
line per skipped record: index, id, reason, detail). Bad records never stop the run; the summary at the end
reports ``read = written + skipped``. Output is byte-for-byte reproducible for the same input and options.

Exit status: 0 when the shards are written; 1 when nothing was written or more than ``--max-skipped`` of the
records were skipped (the shards written stay, ``skipped.jsonl`` says why); 2 for a usage problem found before
any work (a missing argument, annotations file or images folder, an output folder that is not empty without
``--overwrite``), reported as one line on stderr that names the fix.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eve_lightning.data.geometry import SUPPORTED_IMAGE_SIZES
from eve_lightning.data.records import (
    DEFAULT_MAX_PIXELS,
    BuildOptions,
    Prepared,
    Skipped,
    prepare_record,
    read_annotations,
)
from eve_lightning.data.shards import INDEX_FILE, SIDECAR_SUFFIX, tar_member
from eve_lightning.utils.cli import OneLineArgumentParser

REPORT_FILE = "skipped.jsonl"
DEFAULT_SHARD_SIZE = 2000
DEFAULT_SHARD_BYTES = 1 << 30
DEFAULT_MAX_SKIPPED = 0.05  # more skipped records than this share make the build exit 1


class UsageError(ValueError):
    """A make_shards invocation that cannot work; found before any record is read."""


@dataclass
class BuildSummary:
    """What a build did: ``read == written + sum(skipped.values())``."""

    out_dir: str
    read: int = 0
    written: int = 0
    shards: int = 0
    images: int = 0
    skipped: Counter = field(default_factory=Counter)
    failure: str | None = None  # set by the CLI: why the build does not count as a success

    def line(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"read {self.read} records; wrote {self.written} samples ({self.images} with an image) in "
            f"{self.shards} shards to {self.out_dir}; skipped {sum(self.skipped.values())} ({reasons})"
        )


class ShardWriter:
    """Writes samples into numbered tar shards and their sidecar indexes, then ``index.json``.

    Args:
        out_dir: output folder (created).
        shard_size: maximum samples per shard.
        max_shard_bytes: a shard is closed once it reaches this many bytes.
        prefix: shard file name prefix.
    """

    def __init__(
        self,
        out_dir: str | Path,
        shard_size: int = DEFAULT_SHARD_SIZE,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        prefix: str = "shard",
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._columns: dict[str, list[Any]] = {}

    def _open_next(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)
        self._columns = {k: [] for k in ("keys", "offsets", "has_image", "words", "width", "height")}
        self.shards.append({"file": name, "num_samples": 0, "num_images": 0, "words": 0})

    def add(self, sample: Prepared) -> None:
        """Append one prepared sample (opening or rotating shards as needed)."""
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        cols = self._columns
        cols["keys"].append(sample.key)
        cols["offsets"].append(self._tar.offset)
        cols["has_image"].append(int(sample.has_image))
        cols["words"].append(sample.words)
        cols["width"].append(sample.width)
        cols["height"].append(sample.height)
        for ext, data in sample.members:
            info, payload = tar_member(f"{sample.key}.{ext}", data)
            self._tar.addfile(info, payload)
        shard = self.shards[-1]
        shard["num_samples"] += 1
        shard["num_images"] += int(sample.has_image)
        shard["words"] += sample.words
        if shard["num_samples"] >= self.shard_size or self._tar.offset >= self.max_shard_bytes:
            self._close_current()

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        shard = self.shards[-1]
        shard["bytes"] = (self.out_dir / shard["file"]).stat().st_size
        shard["sidecar"] = shard["file"][:-4] + SIDECAR_SUFFIX
        with open(self.out_dir / shard["sidecar"], "w", encoding="utf-8") as f:
            json.dump(self._columns, f, separators=(",", ":"))
        self._tar = None

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the last shard and write ``index.json``; return the index."""
        self._close_current()
        index = {
            "version": 1,
            "num_samples": sum(s["num_samples"] for s in self.shards),
            "num_images": sum(s["num_images"] for s in self.shards),
            "shards": self.shards,
            **(extra or {}),
        }
        with open(self.out_dir / INDEX_FILE, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
        return index


def _prepare(item: tuple[int, Any], opts: BuildOptions) -> Prepared | Skipped:
    return prepare_record(item[0], item[1], opts)


def _prepared_stream(records: Iterable[Any], opts: BuildOptions, workers: int) -> Iterator[Prepared | Skipped]:
    items = enumerate(records)
    fn = partial(_prepare, opts=opts)
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=8)


def _clean_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace its shards")
        for p in out.iterdir():
            ours = p.suffix == ".tar" or p.name.endswith(SIDECAR_SUFFIX) or p.name in (INDEX_FILE, REPORT_FILE)
            if p.is_file() and ours:
                p.unlink()


def build_shards(
    records: Iterable[Any],
    out_dir: str | Path,
    opts: BuildOptions,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool | None = None,
    total: int | None = None,
) -> BuildSummary:
    """Write ``records`` as shards (the API behind the CLI; also used by the demo generator).

    Args:
        records: parsed annotation records, in order (see ``records.read_annotations``).
        out_dir: output folder; must be empty unless ``overwrite``.
        opts: how each record is prepared.
        shard_size: maximum samples per shard.
        max_shard_bytes: maximum bytes per shard.
        workers: processes preparing records (decode/resize/encode); output order does not depend on it.
        overwrite: replace shards already in ``out_dir``.
        progress: show a progress bar (default: when stderr is a terminal).
        total: record count for the progress bar.

    Returns:
        The build summary (also stored in ``index.json``).
    """
    out = Path(out_dir)
    _clean_out_dir(out, overwrite)
    writer = ShardWriter(out, shard_size, max_shard_bytes)
    summary = BuildSummary(str(out))
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    with open(out / REPORT_FILE, "w", encoding="utf-8") as report:
        for item in tqdm(_prepared_stream(records, opts, workers), total=total, disable=not show, unit="rec"):
            summary.read += 1
            if isinstance(item, Skipped):
                summary.skipped[item.reason] += 1
                row = {"index": item.index, "id": item.record_id, "reason": item.reason, "detail": item.detail}
                report.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            writer.add(item)
            summary.written += 1
            summary.images += int(item.has_image)
    info = {"format": opts.fmt, "max_side": opts.max_side}
    if opts.max_side is not None and opts.family != "eve":
        info["max_side_family"] = opts.family  # EVE v1 indexes stay as they were (the demo set's bytes with them)
    writer.close(info | {"read": summary.read, "skipped": dict(sorted(summary.skipped.items()))})
    summary.shards = len(writer.shards)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m eve_lightning.data.make_shards", description=__doc__.split("\n")[0])
    p.add_argument("--format", choices=["llava", "caption"], required=True, help="annotation layout")
    p.add_argument("--annotations", required=True, help=".json list or .jsonl of records")
    p.add_argument("--images", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="output folder for shards and index")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="max samples per shard")
    p.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES, help="max bytes per shard")
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="resize images to the size training takes them to at this resolution (decode once, not every epoch): "
        "EVE v1 672 | 1344, EVEv2 (--family evev2) a multiple of 32, 800 | 1600",
    )
    p.add_argument(
        "--family",
        choices=["eve", "evev2"],
        default="eve",
        help="whose resize rule --max-side follows (EVE v1 bands, or EVEv2's 32-px cells of about max-side^2 px)",
    )
    p.add_argument("--no-upscale", action="store_true", help="with --max-side, keep smaller images as they are")
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip images with more pixels (before decoding)"
    )
    p.add_argument(
        "--max-skipped",
        type=float,
        default=DEFAULT_MAX_SKIPPED,
        help="largest share of skipped records that still exits 0 (default %(default)s; 1 accepts any)",
    )
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="preparing processes")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, what cannot produce shards (one line naming the fix)."""
    if not Path(args.annotations).is_file():
        raise UsageError(f"--annotations {args.annotations} is not a file: give the .json or .jsonl annotation list")
    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images} is not a folder: give the folder the records' image paths start in")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the shards")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} is not empty: choose a new folder, or pass --overwrite to replace its shards")
    if args.max_side is not None:
        if args.family == "eve" and args.max_side not in SUPPORTED_IMAGE_SIZES:
            sizes = " or ".join(map(str, SUPPORTED_IMAGE_SIZES))
            raise UsageError(
                f"--max-side {args.max_side}: EVE v1 images are stored at {sizes}; for EVEv2 shards add --family evev2"
            )
        if args.family == "evev2" and (args.max_side < 32 or args.max_side % 32):
            raise UsageError(f"--max-side {args.max_side}: EVEv2 sizes are multiples of 32 px (800 or 1600)")
    if not 0.0 <= args.max_skipped <= 1.0:
        raise UsageError(f"--max-skipped is a share of the records in [0, 1], got {args.max_skipped}")
    for flag in ("max_pixels", "workers", "shard_size", "shard_bytes"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise UsageError(
                f"{name} must be a positive whole number, got {getattr(args, flag)}: drop it for the default"
            )


def build_from_args(args: argparse.Namespace) -> BuildSummary:
    """Read the annotations and write the shards the arguments describe."""
    opts = BuildOptions(
        fmt=args.format,
        images_dir=args.images,
        max_side=args.max_side,
        upscale=not args.no_upscale,
        max_pixels=args.max_pixels,
        family=args.family,
    )
    total = None
    if str(args.annotations).endswith(".jsonl"):  # stream large JSONL files; count lines for the progress bar
        with open(args.annotations, encoding="utf-8") as f:
            total = sum(1 for line in f if line.strip())
        records: Iterable[Any] = read_annotations(args.annotations)
    else:
        records = list(read_annotations(args.annotations))
        total = len(records)
    return build_shards(
        records,
        args.out,
        opts,
        shard_size=args.shard_size,
        max_shard_bytes=args.shard_bytes,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        total=total,
    )


def build_failure(summary: BuildSummary, max_skipped: float) -> str | None:
    """Why a finished build is not a success (None when it is): nothing written, or too many records skipped."""
    report = Path(summary.out_dir) / REPORT_FILE
    skipped = sum(summary.skipped.values())
    if summary.written == 0:
        return f"no sample was written ({summary.read} records read, {skipped} skipped): see {report}"
    if summary.read and skipped / summary.read > max_skipped:
        return (
            f"{skipped} of {summary.read} records ({skipped / summary.read:.1%}) were skipped, more than "
            f"--max-skipped {max_skipped:g}: see {report} (the {summary.written} samples written are kept; "
            "--max-skipped 1 accepts the build)"
        )
    return None


def main(argv: Sequence[str] | None = None) -> BuildSummary:
    """Build shards from the command line's arguments and return the summary (raises `UsageError`)."""
    args = parse_args(argv)
    check_args(args)
    summary = build_from_args(args)
    print(summary.line())
    if summary.skipped:
        print(f"skipped records are listed in {Path(args.out) / REPORT_FILE}")
    summary.failure = build_failure(summary, args.max_skipped)
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    """The command: exit status 0 (written), 1 (nothing written or too many skipped), 2 (usage)."""
    prog = "eve_lightning.data.make_shards"
    try:
        summary = main(argv)
    except (UsageError, ValueError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if summary.failure:
        print(f"{prog}: error: {summary.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
