"""Benchmark: data-loading throughput with 1% corrupt images vs clean shards, side by side in one run.

`python -m eve_lightning.bench.corrupt [--samples 400] [--fraction 0.01] [--repeats 3]` builds pre-resized caption
shards, copies them with a fraction of the images overwritten by noise of the same length, and times one full pass
of our stream (1 process) over each, alternating, best of `--repeats`. Corrupt samples are skipped without sleeping
or retrying, so the loss should be about the corrupt fraction. The last line is JSON:
`{"clean": S, "corrupt": S, "fraction": F, "dropped": N, "loss_pct": P}` (S in samples read per second).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eve_lightning.bench.data import caption_stream, write_originals
from eve_lightning.data.make_shards import build_shards
from eve_lightning.data.records import BuildOptions
from eve_lightning.data.tokenizer import load_tokenizer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def corrupt_shard_copy(src: Path, dst: Path, fraction: float, seed: int = 0) -> set[str]:
    """Copy a shard folder, overwriting `fraction` of its images with noise of the same length.

    Sizes and offsets stay the same, so the shard indexes still match. Returns the corrupted sample keys.
    """
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    corrupted: set[str] = set()
    for tar_path in sorted(dst.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        images = [m.name for m, _ in members if m.name.endswith(IMAGE_SUFFIXES)]
        if not images:
            continue
        pick = set(rng.choice(images, size=max(1, round(fraction * len(images))), replace=False).tolist())
        with tarfile.open(tar_path, "w") as tar:
            for m, data in members:
                if m.name in pick:
                    data = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
                    corrupted.add(m.name.rsplit(".", 1)[0])
                tar.addfile(m, io.BytesIO(data))
    return corrupted


def one_pass(shard_dir: Path, tokenizer, image_size: int, batch_size: int) -> tuple[float, int, int]:
    """(samples read per second, samples read, samples dropped) of one full pass."""
    stream = caption_stream(shard_dir, tokenizer, image_size, batch_size)
    start = time.perf_counter()
    read = dropped = 0
    for batch in stream.iter_worker(0):
        stats = batch["meta"]["stats"]
        kept = len(batch["meta"]["keys"])
        dropped += int(stats.get("dropped", 0))
        read += kept + int(stats.get("dropped", 0)) - int(stats.get("filler", 0))
    return read / (time.perf_counter() - start), read, dropped


def run(samples: int = 400, fraction: float = 0.01, repeats: int = 3, image_size: int = 672) -> dict:
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="eve_bench_corrupt_") as tmp:
        root = Path(tmp)
        originals = write_originals(root / "originals")
        records = [dict(originals[i % len(originals)], id=str(i)) for i in range(samples)]
        opts = BuildOptions(fmt="caption", images_dir=str(root / "originals"), max_side=image_size)
        build_shards(records, root / "clean", opts, shard_size=100, workers=1, progress=False)
        corrupted = corrupt_shard_copy(root / "clean", root / "corrupt", fraction)
        one_pass(root / "clean", tokenizer, image_size, 8)  # warm-up
        best = {"clean": 0.0, "corrupt": 0.0}
        dropped = 0
        for _ in range(repeats):
            for name in ("clean", "corrupt"):
                rate, _, drops = one_pass(root / name, tokenizer, image_size, 8)
                best[name] = max(best[name], rate)
                if name == "corrupt":
                    dropped = drops
    result = {
        "clean": round(best["clean"], 1),
        "corrupt": round(best["corrupt"], 1),
        "fraction": fraction,
        "corrupted": len(corrupted),
        "dropped": dropped,
        "loss_pct": round(100 * (1 - best["corrupt"] / best["clean"]), 2),
    }
    print(
        f"{samples} samples at {image_size} px, 1 process: clean {result['clean']} samples/s | "
        f"{len(corrupted)} corrupt ({fraction:.0%}): {result['corrupt']} samples/s, {dropped} dropped | "
        f"throughput loss {result['loss_pct']}%"
    )
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.corrupt", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = run(args.samples, args.fraction, args.repeats)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
