"""Streaming datasets over shards: decode -> tokenize/fit -> resize -> batch -> collate, inside each worker.

``SampleProcessor`` turns one raw shard sample into a ``ProcessedSample`` or a drop reason. ``ShardStream`` is the
``IterableDataset`` a DataLoader runs with ``batch_size=None``: every worker yields ready, collated batches.

- exact mode (SFT, validation): follows ``plan.plan_exact_pass``: each sample of the pass is read by exactly one
  (rank, worker), and every rank yields exactly ``len(stream)`` batches. Raw samples wait in memory (encoded
  bytes) only until their batch is complete.
- resampled mode (pre-training): each worker draws shards at random with replacement (seeded by seed, epoch,
  rank, worker), passes raw samples through a shuffle buffer, and stops after its share of the epoch's batches.

Dropped samples (no image for ``plain``, image larger than ``max_length``, all labels masked, undecodable image or
conversation) are counted in ``batch["meta"]["stats"]``. In exact mode a batch whose samples were all dropped is
replaced by a one-sample filler batch (the worker's previous good sample) so that batch counts stay equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from eve_lightning.constants import IGNORE_INDEX, MAX_IMAGE_PIXELS
from eve_lightning.data.collate import CANVASES, Canvas, PackedCollator, PaddedCollator, ProcessedSample
from eve_lightning.data.conversation import ConversationError
from eve_lightning.data.encoding import encode_parts, fit_length
from eve_lightning.data.geometry import (
    FAMILIES,
    BandGeometry,
    Family,
    GridGeometry,
    band_geometry,
    evev2_geometry,
)
from eve_lightning.data.image import open_image, prepare_image, prepare_image_evev2
from eve_lightning.data.options import CollateMode
from eve_lightning.data.sharding import (
    ExactPlan,
    WindowBatcher,
    exact_batches_per_rank,
    plan_exact_pass,
    plan_global_order,
    split_quota,
)
from eve_lightning.data.shards import (
    ShardFormatError,
    ShardInfo,
    ShardSample,
    UnsafeShardError,
    decode_sample,
    iter_shard,
)
from eve_lightning.data.templates import get_template
from eve_lightning.data.tokenizer import TextTokenizer

MAX_CONSECUTIVE_DROPS = 10_000
DROP_RATE_MIN_SAMPLES = 100  # samples a worker processes before its drop rate is judged


class DropRateError(RuntimeError):
    """Too large a share of the samples could not be used: the data is broken, not just noisy."""


class DropMonitor:
    """Counts used and dropped samples of one worker and stops the run past `max_rate` (None = never)."""

    def __init__(self, max_rate: float | None) -> None:
        self.max_rate = max_rate
        self.seen = 0
        self.reasons: Counter = Counter()

    def record(self, dropped_reason: str | None) -> None:
        self.seen += 1
        if dropped_reason is None:
            return
        self.reasons[dropped_reason] += 1
        dropped = sum(self.reasons.values())
        if self.max_rate is not None and self.seen >= DROP_RATE_MIN_SAMPLES and dropped > self.max_rate * self.seen:
            raise DropRateError(
                f"{dropped} of {self.seen} samples ({dropped / self.seen:.1%}) were dropped ({dict(self.reasons)}), "
                f"more than data.stream.max_drop_rate={self.max_rate:.1%}: check the shards "
                "(or raise data.stream.max_drop_rate)"
            )


@dataclass(frozen=True)
class SampleConfig:
    """How samples are processed.

    Attributes:
        template: chat template name.
        image_size: EVE canvas side (672 or 1344); EVEv2: ``max_size`` of its resize rule (800 or 1600).
        max_length: limit on the expanded sequence length (text + image tokens).
        teacher_view: also build the 336 px teacher band (EVE v1 only).
        exact_teacher: resize the teacher band bicubically even from pre-resized images.
        max_pixels: images with more pixels (width x height, read from the header) are dropped undecoded
            (reason ``too_many_pixels``).
        family: ``eve`` (EVE v1: fixed canvas, centred band, 28 px cells) or ``evev2`` (area rule, 32 px cells,
            band at the top-left; ``geometry.evev2_geometry`` with the training rule).
        canvas: canvas of the batches (``collate``): None = the family's (``fixed`` for EVE v1, ``square`` for
            EVEv2); ``rect`` (EVEv2) pads to the batch's tallest and widest band: [N, 3, H, W].
    """

    template: str
    image_size: int
    max_length: int
    teacher_view: bool = True
    exact_teacher: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS
    family: Family = "eve"
    canvas: Canvas | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"data.family must be one of {FAMILIES} (EVE v1, EVEv2), got {self.family!r}")
        canvas = self.canvas or ("fixed" if self.family == "eve" else "square")
        object.__setattr__(self, "canvas", canvas)
        if canvas not in CANVASES:
            raise ValueError(f"data.canvas must be one of {CANVASES} or null, got {canvas!r}")
        if self.family == "eve" and canvas != "fixed":
            raise ValueError(f"EVE v1 images go on the fixed {self.image_size}-px canvas: set data.canvas=null")
        if self.family == "evev2":
            if canvas == "fixed":
                raise ValueError("EVEv2 canvases are sized per batch: set data.canvas to square, rect or null")
            if self.teacher_view:
                raise ValueError("EVEv2 has no CLIP teacher: set data.teacher_view=false")


class SampleProcessor:
    """Raw shard sample -> ``ProcessedSample`` or a drop reason (a short string)."""

    def __init__(self, tokenizer: TextTokenizer, cfg: SampleConfig) -> None:
        if cfg.max_length < 2:
            raise ValueError("max_length must be >= 2")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.template = get_template(cfg.template)

    def __call__(self, raw: dict[str, Any]) -> ProcessedSample | str:
        try:
            sample = decode_sample(raw)
        except ConversationError as exc:
            return exc.reason
        except (UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, (ShardFormatError, UnsafeShardError)):
                raise
            return "bad_text"
        return self.process(sample)

    def process(self, sample: ShardSample) -> ProcessedSample | str:
        """Tokenize, fit and prepare the image of a decoded sample."""
        if sample.image is None and self.template.requires_image:
            return "no_image"
        img = None
        num_image_tokens = 0
        if sample.image is not None:
            try:
                img = open_image(sample.image)
                if img.width * img.height > self.cfg.max_pixels:
                    return "too_many_pixels"  # checked on the header: the pixels are never decoded
                num_image_tokens = self._geometry(img.width, img.height).num_image_tokens
            except Exception:
                return "bad_image"
        enc = encode_parts(self.template.render(sample.turns), self.tokenizer)
        fitted = fit_length(enc, num_image_tokens, self.cfg.max_length)
        if isinstance(fitted, str):
            return fitted
        prepared = None
        if img is not None:
            try:
                if self.cfg.family == "evev2":
                    prepared = prepare_image_evev2(img, self.cfg.image_size, training=True)
                else:
                    prepared = prepare_image(img, self.cfg.image_size, self.cfg.teacher_view, self.cfg.exact_teacher)
            except Exception:
                return "bad_image"
        key = f"{sample.url}#{sample.key}"
        return ProcessedSample(key, fitted.input_ids, fitted.labels, fitted.image_pos, prepared, num_image_tokens)

    def _geometry(self, width: int, height: int) -> BandGeometry | GridGeometry:
        """Where an image of this size goes, and its token count, under the family's rule."""
        if self.cfg.family == "evev2":
            return evev2_geometry(width, height, self.cfg.image_size, training=True)
        return band_geometry(width, height, self.cfg.image_size)


def filler_sample(tokenizer: TextTokenizer) -> ProcessedSample:
    """A minimal text-only sample (BOS, EOS with EOS supervised) used when nothing else is available."""
    ids = [t for t in (tokenizer.bos_id, tokenizer.eos_id) if t is not None]
    labels = [IGNORE_INDEX] * (len(ids) - 1) + [tokenizer.eos_id]
    return ProcessedSample("<filler>", np.asarray(ids, np.int64), np.asarray(labels, np.int64), -1, None, 0)


class ShardStream(IterableDataset):
    """Iterable dataset of collated batches streamed from shards (use with ``DataLoader(batch_size=None)``).

    Args:
        shards: the shards (with sidecar columns for exact mode with grouping).
        tokenizer: the tokenizer (pickled to workers).
        sample: sample processing options.
        batch_size: samples per batch.
        resampled: endless random shard sampling (pre-training) instead of one exact pass.
        batches_per_rank: resampled mode: batches each rank yields per epoch.
        shuffle: shuffle (exact mode: shard order, windows and batch order; resampled: shuffle buffer).
        group_by_modality: single-modality, length-sorted batches.
        window: batches per shuffle/grouping window.
        shuffle_buffer: resampled mode: raw samples held for shuffling.
        collate: ``padded`` or ``packed``.
        pack_length: packed rows' budget in expanded tokens (default ``max_length``).
        pad_to_multiple_of: round row lengths up.
        seed: base seed (same on every rank).
        rank: this process's rank.
        world_size: number of ranks.
        num_workers: DataLoader workers per rank (0 and 1 both mean one stream in the loading process).
        max_drop_rate: share of unusable samples (corrupt image, too long, nothing supervised) a worker tolerates
            before the run stops with `DropRateError`; None = no limit.
        order: ``rank`` (each rank streams its own share) or ``global``: every optimizer step sees the same samples
            whatever the number of ranks, workers and accumulation steps (``plan.plan_global_order``; one pass per
            epoch, no resampling, no modality grouping).
        accumulation: micro-batches per optimizer step on each rank (``global`` order only).
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        tokenizer: TextTokenizer,
        sample: SampleConfig,
        *,
        batch_size: int,
        resampled: bool,
        batches_per_rank: int | None = None,
        shuffle: bool = True,
        group_by_modality: bool = False,
        window: int = 16,
        shuffle_buffer: int = 1000,
        collate: CollateMode = "padded",
        pack_length: int | None = None,
        pad_to_multiple_of: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        max_drop_rate: float | None = None,
        order: Literal["rank", "global"] = "rank",
        accumulation: int = 1,
    ) -> None:
        super().__init__()
        if order not in ("rank", "global"):
            raise ValueError(f"order must be 'rank' or 'global', got {order!r}")
        if order == "global" and (resampled or group_by_modality):
            raise ValueError(
                "data.stream.order=global plans one pass of fixed global batches: set data.stream.resampled=false "
                "and data.stream.group_by_modality_length=false"
            )
        if accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {accumulation}")
        self.order = order
        self.accumulation = accumulation
        self.max_drop_rate = max_drop_rate
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.shards = list(shards)
        self.tokenizer = tokenizer
        self.sample = sample
        self.batch_size = batch_size
        self.resampled = resampled
        self.shuffle = shuffle
        self.group = group_by_modality
        self.window = window
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = max(1, num_workers)
        self.epoch = 0
        self.skip_batches = 0  # batches of this rank to skip at the start of the next pass (exact resume)
        self._plan: tuple[int, ExactPlan] | None = None
        if collate == "packed":
            budget = pack_length or sample.max_length
            if budget < sample.max_length:
                raise ValueError(f"pack_length {budget} must be >= max_length {sample.max_length}")
            self.collator: PaddedCollator | PackedCollator = PackedCollator(
                tokenizer.pad_id,
                sample.image_size,
                budget,
                sample.teacher_view,
                pad_to_multiple_of,
                canvas=sample.canvas or "fixed",
            )
        elif collate == "padded":
            self.collator = PaddedCollator(
                tokenizer.pad_id,
                sample.image_size,
                sample.teacher_view,
                pad_to_multiple_of,
                canvas=sample.canvas or "fixed",
            )
        else:
            raise ValueError(f"collate must be 'padded' or 'packed', got {collate!r}")
        if resampled:
            if not batches_per_rank or batches_per_rank < 1:
                raise ValueError("resampled streams need batches_per_rank >= 1")
            self.batches_per_rank = batches_per_rank
        elif group_by_modality and not all(s.has_columns for s in self.shards):
            raise ValueError("modality grouping needs the shards' sidecar indexes (written by make_shards)")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes shuffling and resampling seeds)."""
        self.epoch = int(epoch)

    def set_skip(self, batches: int) -> None:
        """Skip the first `batches` batches of this rank in the next pass (to resume mid-epoch exactly)."""
        self.skip_batches = max(0, int(batches))

    def worker_batch_counts(self) -> list[int]:
        """Batches each worker of this rank yields in one pass."""
        if self.resampled:
            return [split_quota(self.batches_per_rank, self.num_workers, w) for w in range(self.num_workers)]
        return [len(slot.batches) for slot in self.plan().slots[self.rank]]

    def worker_skip(self, worker: int) -> int:
        """The share of `skip_batches` of the worker role `worker` (see `__iter__` for the role rotation).

        The DataLoader returns batches in order, taking one from each worker that still has batches, round after
        round; the first `skip_batches` of that sequence are the ones already trained on.
        """
        if not self.skip_batches:
            return 0
        counts = self.worker_batch_counts()
        order = [w for r in range(max(counts, default=0)) for w in range(len(counts)) if r < counts[w]]
        return sum(1 for w in order[: self.skip_batches] if w == worker)

    def plan(self, epoch: int | None = None) -> ExactPlan:
        """Return the pass plan of ``epoch`` (default: the current epoch): exact per-rank, or global order."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:
            counts = [s.num_samples for s in self.shards]
            layout = {
                "world_size": self.world_size,
                "num_workers": self.num_workers,
                "batch_size": self.batch_size,
                "seed": self.seed,
                "epoch": epoch,
                "shuffle": self.shuffle,
            }
            if self.order == "global":
                plan = plan_global_order(counts, accumulation=self.accumulation, **layout)
            else:
                shards = self.shards
                is_image = [s.has_image if s.has_image is not None else np.ones(s.num_samples, bool) for s in shards]
                words = [s.words if s.words is not None else np.zeros(s.num_samples, np.int64) for s in shards]
                plan = plan_exact_pass(counts, is_image, words, group=self.group, window=self.window, **layout)
            self._plan = (epoch, plan)
        return self._plan[1]

    def __len__(self) -> int:
        if self.resampled:
            return self.batches_per_rank
        if self.order == "global":
            return self.plan().batches_per_rank  # planning reads no data: sizes only
        total = sum(s.num_samples for s in self.shards)
        return exact_batches_per_rank(total, self.world_size, self.num_workers, self.batch_size, self.group)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.num_workers:
            raise ValueError(f"stream was built for {self.num_workers} workers but runs with {num_workers}")
        # After skipping n batches the DataLoader starts again at worker 0, but the next batch of the pass belongs
        # to worker n % W: rotate the roles so the resumed sequence continues the interrupted one.
        return self.iter_worker((worker + self.skip_batches) % self.num_workers)

    def iter_worker(self, worker: int) -> Iterator[dict[str, Any]]:
        """Yield the batches of one worker of this rank (tests call it directly to simulate workers)."""
        processor = SampleProcessor(self.tokenizer, self.sample)
        if self.resampled:
            return self._iter_resampled(processor, worker)
        return self._iter_exact(processor, worker)

    # -- exact pass ---------------------------------------------------------------------------------------
    def _iter_exact(self, processor: SampleProcessor, worker: int) -> Iterator[dict[str, Any]]:
        slot = self.plan().slots[self.rank][worker]
        batches = slot.batches
        skip = self.worker_skip(worker)
        ready = np.maximum.accumulate([int(b.max()) for b in batches]) if batches else np.zeros(0, np.int64)
        buffer: dict[int, dict[str, Any]] = {}
        drops: Counter = Counter()
        monitor = DropMonitor(self.max_drop_rate)
        last_good: list[ProcessedSample] = []
        emitted, pos = 0, -1
        for piece in slot.pieces:
            info = self.shards[piece.shard]
            offset = int(info.offsets[piece.start]) if info.offsets is not None else None
            for raw in iter_shard(info.url, piece.start, piece.stop, offset):
                pos += 1
                if info.keys is not None and info.keys[raw["__index__"]] != raw["__key__"]:
                    raise ShardFormatError(f"{info.url} changed since it was indexed (sample {raw['__index__']})")
                buffer[pos] = raw
                while emitted < len(batches) and ready[emitted] <= pos:
                    raws = [buffer.pop(int(p)) for p in batches[emitted]]
                    if emitted >= skip:  # batches before `skip` were trained on before a resume: read, not decoded
                        yield self._collate_exact(processor, raws, drops, last_good, monitor)
                    emitted += 1
        if pos + 1 != slot.num_samples or emitted != len(batches):
            raise ShardFormatError(f"worker {worker} read {pos + 1} of {slot.num_samples} planned samples")

    def _collate_exact(
        self,
        processor: SampleProcessor,
        raws: list[dict[str, Any]],
        drops: Counter,
        last_good: list[ProcessedSample],
        monitor: DropMonitor,
    ) -> dict[str, Any]:
        samples: list[ProcessedSample] = []
        for raw in raws:
            out = processor(raw)
            if isinstance(out, str):
                drops[out] += 1
                monitor.record(out)
            else:
                samples.append(out)
                monitor.record(None)
        filler = 0
        if not samples:
            samples = [last_good[0] if last_good else filler_sample(self.tokenizer)]
            filler = 1
        else:
            last_good[:] = samples[-1:]
        batch = self.collator(samples)
        self._add_drop_stats(batch, drops, filler)
        return batch

    @staticmethod
    def _add_drop_stats(batch: dict[str, Any], drops: Counter, filler: int) -> None:
        stats = batch["meta"]["stats"]
        stats["dropped"] = float(sum(drops.values()))
        for reason, n in drops.items():
            stats[f"dropped_{reason}"] = float(n)
        stats["filler"] = float(filler)
        drops.clear()

    # -- resampled stream ---------------------------------------------------------------------------------
    def _iter_resampled(self, processor: SampleProcessor, worker: int) -> Iterator[dict[str, Any]]:
        quota = split_quota(self.batches_per_rank, self.num_workers, worker)
        skip = self.worker_skip(worker)
        if quota == 0:
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
        counts = np.array([s.num_samples for s in self.shards], dtype=np.float64)
        if counts.sum() <= 0:
            raise ValueError("resampled stream over empty shards")
        weights = counts / counts.sum()
        # Without grouping the shuffle buffer already mixes samples: emit every batch as soon as it is full.
        window = self.window if self.group else 1
        batcher = WindowBatcher(self.batch_size, window, self.group, rng if self.shuffle else None)
        buffer: list[dict[str, Any]] = []
        drops: Counter = Counter()
        monitor = DropMonitor(self.max_drop_rate)
        produced = consecutive_drops = 0
        while True:
            shard = self.shards[int(rng.choice(len(self.shards), p=weights))]
            for raw in iter_shard(shard.url):
                if self.shuffle and self.shuffle_buffer > 1:
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(raw)
                        continue
                    j = int(rng.integers(len(buffer)))
                    raw, buffer[j] = buffer[j], raw
                out = processor(raw)
                monitor.record(out if isinstance(out, str) else None)
                if isinstance(out, str):
                    drops[out] += 1
                    consecutive_drops += 1
                    if consecutive_drops > MAX_CONSECUTIVE_DROPS:
                        raise RuntimeError(f"{consecutive_drops} consecutive samples dropped: {dict(drops)}")
                    continue
                consecutive_drops = 0
                for samples in batcher.add(out, out.has_image, out.expanded_length):
                    produced += 1
                    if produced > skip:  # earlier batches are replayed to reach the same state, not collated
                        batch = self.collator(samples)
                        self._add_drop_stats(batch, drops, 0)
                        yield batch
                    else:
                        drops.clear()
                    if produced >= quota:
                        return
