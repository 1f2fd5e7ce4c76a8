"""Data-loading benchmark: our shard path vs. a reference-style path, samples/s in one worker, at 672 and 1344 px.

Usage::

    python -m eve_lightning.bench.data [--samples 256] [--ref-samples 48] [--sizes 672 1344]

It builds its own data in a temporary folder: originals (real photos from scikit-image at their native sizes, plus
portrait and very wide crops, plus demo shape pictures) and, per resolution, pre-resized caption shards written by
``make_shards --max-side S``. Both paths produce the EVE view and the 336 px teacher view with masks, the
``plain`` template ids and labels, and a collated batch:

- ours: ``ShardStream`` reading the shards (tar -> JPEG decode -> paste into uint8 canvases, box-reduced teacher
  band, vectorized collation), in the calling process (= one worker);
- reference: what the original does per sample: open the original file, two bicubic PIL resizes, paste on PIL
  canvases, ``CLIPImageProcessor`` normalization of both views to float32, mask as a 4th channel, float stacking.

The last line printed is JSON: ``{"672": {"ours": S, "reference": S, "ratio": R}, "1344": {...}}`` with S in
samples/s per worker.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eve_lightning.constants import BACKGROUND_RGB, CLIP_MEAN, CLIP_STD, IGNORE_INDEX, TEACHER_IMAGE_SIZE
from eve_lightning.data import synthetic_shapes
from eve_lightning.data.conversation import caption_turns
from eve_lightning.data.encoding import encode_parts
from eve_lightning.data.geometry import band_geometry
from eve_lightning.data.make_shards import build_shards
from eve_lightning.data.records import BuildOptions
from eve_lightning.data.shards import resolve_shards
from eve_lightning.data.stream import SampleConfig, ShardStream
from eve_lightning.data.templates import get_template
from eve_lightning.data.tokenizer import TextTokenizer, load_tokenizer

MAX_LENGTH = {672: 2048, 1344: 4096}


def write_originals(folder: Path, num_demo: int = 16) -> list[dict[str, Any]]:
    """Write the original images (JPEG q90 photos, PNG demo shapes) and return caption records for them."""
    from skimage import data as skdata

    photos = {
        name: getattr(skdata, name)()
        for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")
    }
    photos["camera_grey"] = skdata.camera()
    photos["chelsea_portrait"] = np.ascontiguousarray(photos["chelsea"].transpose(1, 0, 2))
    photos["coffee_portrait"] = np.ascontiguousarray(photos["coffee"].transpose(1, 0, 2))
    photos["rocket_wide"] = photos["rocket"][100:260]  # 640 x 160: 4:1
    photos["hubble_tall"] = photos["hubble_deep_field"][:, 300:580]  # 280 x 872: 1:3
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for name, arr in photos.items():
        rel = f"photos/{name}.jpg"
        (folder / "photos").mkdir(exist_ok=True)
        Image.fromarray(arr).save(folder / rel, format="JPEG", quality=90)
        records.append({"id": name, "image": rel, "caption": f"a photo named {name.replace('_', ' ')}."})
    for i in range(num_demo):
        rec = synthetic_shapes.make_record(
            i, task="pretrain", split="train", seed=7, images_dir=str(folder), text_only=0.0
        )
        records.append(rec)
    return records


class ReferencePath:
    """The original per-sample preprocessing, reproduced for timing (PIL resizes + CLIPImageProcessor)."""

    def __init__(self, image_size: int, tokenizer: TextTokenizer, images_dir: Path) -> None:
        import transformers

        transformers.logging.set_verbosity_error()  # no "torchvision missing, using the PIL backend" notice
        processor_cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
        common = {"do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "resample": 3}
        self.eve_proc = processor_cls(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **common
        )
        self.clip_proc = processor_cls(
            size={"shortest_edge": TEACHER_IMAGE_SIZE},
            crop_size={"height": TEACHER_IMAGE_SIZE, "width": TEACHER_IMAGE_SIZE},
            **common,
        )
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.images_dir = images_dir
        self.template = get_template("plain")

    def _view(self, img: Image.Image, w: int, h: int, x0: int, y0: int, side: int, proc: Any) -> torch.Tensor:
        canvas = Image.new("RGB", (side, side), BACKGROUND_RGB)
        canvas.paste(img.resize((w, h), Image.Resampling.BICUBIC), (x0, y0))
        pixels = proc(canvas, return_tensors="pt")["pixel_values"][0]  # [3, side, side] float32
        mask = torch.zeros(1, side, side)
        mask[:, y0 : y0 + h, x0 : x0 + w] = 1
        return torch.cat([pixels, mask])  # [4, side, side]

    def sample(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        img = Image.open(self.images_dir / record["image"]).convert("RGB")
        g = band_geometry(img.width, img.height, self.image_size)
        eve = self._view(img, g.eve.width, g.eve.height, g.eve.x0, g.eve.y0, self.image_size, self.eve_proc)
        t = g.teacher
        teacher = self._view(img, t.width, t.height, t.x0, t.y0, TEACHER_IMAGE_SIZE, self.clip_proc)
        enc = encode_parts(self.template.render(caption_turns(record["caption"])), self.tokenizer)
        return {
            "input_ids": torch.from_numpy(enc.input_ids),
            "labels": torch.from_numpy(enc.labels),
            "images": eve,
            "images_clip": teacher,
        }

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        ids = pad([s["input_ids"] for s in samples], batch_first=True, padding_value=self.tokenizer.pad_id)
        return {
            "input_ids": ids,
            "labels": pad([s["labels"] for s in samples], batch_first=True, padding_value=IGNORE_INDEX),
            "attention_mask": ids.ne(self.tokenizer.pad_id),
            "images": torch.stack([s["images"] for s in samples]),
            "images_clip": torch.stack([s["images_clip"] for s in samples]),
        }


def time_reference(path: ReferencePath, records: list[dict[str, Any]], batch_size: int) -> float:
    """Return samples/s of the reference path over ``records``."""
    start = time.perf_counter()
    for i in range(0, len(records), batch_size):
        path.collate([path.sample(r) for r in records[i : i + batch_size]])
    return len(records) / (time.perf_counter() - start)


def caption_stream(shard_dir: Path, tokenizer: TextTokenizer, image_size: int, batch_size: int) -> ShardStream:
    """One exact, unshuffled pass of our stream over caption shards (plain template, teacher view on)."""
    return ShardStream(
        resolve_shards(str(shard_dir), columns=True),
        tokenizer,
        SampleConfig("plain", image_size, MAX_LENGTH[image_size], teacher_view=True),
        batch_size=batch_size,
        resampled=False,
        shuffle=False,
    )


def time_ours(shard_dir: Path, tokenizer: TextTokenizer, image_size: int, batch_size: int) -> tuple[float, int]:
    """Return (samples/s, samples) of one full pass of our stream over the shards, after a short warm-up."""
    stream = caption_stream(shard_dir, tokenizer, image_size, batch_size)
    for i, _ in enumerate(stream.iter_worker(0)):  # warm-up: imports, file cache
        if i >= 1:
            break
    start = time.perf_counter()
    n = sum(len(batch["meta"]["keys"]) for batch in stream.iter_worker(0))
    return n / (time.perf_counter() - start), n


def run(
    samples: int = 256, ref_samples: int = 48, sizes: Sequence[int] = (672, 1344), batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """Run the benchmark and return ``{size: {"ours", "reference", "ratio"}}``."""
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="eve_bench_data_") as tmp:
        root = Path(tmp)
        originals = write_originals(root / "originals")
        records = [dict(originals[i % len(originals)], id=str(i)) for i in range(samples)]
        for size in sizes:
            t0 = time.perf_counter()
            opts = BuildOptions(fmt="caption", images_dir=str(root / "originals"), max_side=size)
            build_shards(records, root / f"shards_{size}", opts, shard_size=64, workers=1, progress=False)
            build_s = time.perf_counter() - t0
            ours, n = time_ours(root / f"shards_{size}", tokenizer, size, batch_size)
            ref = time_reference(ReferencePath(size, tokenizer, root / "originals"), records[:ref_samples], batch_size)
            results[str(size)] = {"ours": round(ours, 1), "reference": round(ref, 1), "ratio": round(ours / ref, 2)}
            print(
                f"{size} px: ours {ours:7.1f} samples/s ({n} samples from pre-resized shards, built in "
                f"{build_s:.1f} s) | reference {ref:6.1f} samples/s ({ref_samples} samples) | x{ours / ref:.2f}"
            )
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.data", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=256, help="samples in the shards (our path reads them all)")
    p.add_argument("--ref-samples", type=int, default=48, help="samples timed on the reference path")
    p.add_argument("--sizes", type=int, nargs="+", default=[672, 1344], choices=[672, 1344], help="resolutions")
    p.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    args = p.parse_args(argv)
    results = run(args.samples, args.ref_samples, args.sizes, args.batch_size)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
