"""Which samples each rank and worker reads, and how they form batches, decided before any byte is read.

Exact pass (SFT, validation): the shards (in a seeded per-epoch order) are one global sample sequence, cut into
``world x workers`` contiguous slots whose sizes differ by at most one sample; a slot is a list of
``(shard, start, stop)`` pieces, so every sample belongs to exactly one slot. Each slot's stream is cut into
windows of ``window`` batches; a window is shuffled (the shuffle buffer) and, with modality grouping (spec
section 4.2, streamed), split by modality, sorted by length and cut into batches, remainders carried to the next
window. Finally every rank gets the same number of batches, ``exact_batches_per_rank``: a bound that depends only
on the slot sizes (not on the epoch's shuffle), reached by splitting the largest batches in two; no sample is
repeated or dropped, no rank waits for another at the end, and every epoch has the same length.

Global order (``plan_global_order``): the same global batches whatever the number of ranks, workers and
accumulation steps, for runs that must be compared step by step across cluster layouts.

Resampled streams (pre-training) have no plan; their per-worker batch quotas come from ``split_quota``, and
``WindowBatcher`` applies the same window grouping online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` of shard number ``shard``."""

    shard: int
    start: int
    stop: int


@dataclass
class SlotPlan:
    """The work of one (rank, worker) slot.

    Attributes:
        pieces: shard ranges in stream order.
        batches: each batch as int64 stream positions (0-based over the slot's samples), in emission order.
    """

    pieces: list[Piece]
    batches: list[np.ndarray] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(p.stop - p.start for p in self.pieces)


@dataclass
class ExactPlan:
    """Slots indexed ``[rank][worker]``; every rank yields ``batches_per_rank`` batches."""

    slots: list[list[SlotPlan]]
    batches_per_rank: int


def window_batches(
    positions: np.ndarray,
    is_image: np.ndarray,
    lengths: np.ndarray,
    carry: dict[bool, np.ndarray],
    batch_size: int,
    group: bool,
    rng: np.random.Generator | None,
    final: bool,
) -> list[np.ndarray]:
    """Cut one window of samples into batches.

    Args:
        positions: int64 [m] ids of the window's samples (already in stream order).
        is_image: bool array indexed by id: the sample has an image.
        lengths: int array indexed by id: grouping length (word count or token count).
        carry: per modality (False key for everything when not grouping), ids left over from earlier windows;
            updated in place.
        batch_size: samples per batch.
        group: single-modality, length-sorted batches.
        rng: shuffles the window and the batch order; None keeps the order.
        final: flush the leftovers as (smaller) batches.

    Returns:
        Batches (int64 id arrays) in emission order.
    """
    if rng is not None:
        positions = rng.permutation(positions)
    pools = (
        {True: positions[is_image[positions]], False: positions[~is_image[positions]]} if group else {False: positions}
    )
    batches: list[np.ndarray] = []
    for mod, new in pools.items():
        pool = np.concatenate([carry.get(mod, np.zeros(0, dtype=np.int64)), new])
        if group:
            pool = pool[np.argsort(-lengths[pool], kind="stable")]  # longest first
        full = len(pool) // batch_size * batch_size
        batches += [pool[i : i + batch_size] for i in range(0, full, batch_size)]
        rest = pool[full:]
        if final and len(rest):
            batches.append(rest)
            rest = rest[:0]
        carry[mod] = rest
    if rng is not None and len(batches) > 1:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def form_batches(
    is_image: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    window: int,
    group: bool,
    rng: np.random.Generator | None,
) -> list[np.ndarray]:
    """Batch a whole stream of ``n = len(is_image)`` samples window by window (see ``window_batches``)."""
    n = len(is_image)
    span = max(1, window) * batch_size
    carry: dict[bool, np.ndarray] = {}
    batches: list[np.ndarray] = []
    for w0 in range(0, n, span):
        pos = np.arange(w0, min(n, w0 + span), dtype=np.int64)
        batches += window_batches(pos, is_image, lengths, carry, batch_size, group, rng, final=w0 + span >= n)
    return batches


def slot_sizes(total: int, n_slots: int) -> list[int]:
    """Samples per slot of an exact pass: contiguous, sizes differ by at most one."""
    base, extra = divmod(total, n_slots)
    return [base + (1 if s < extra else 0) for s in range(n_slots)]


def exact_batches_per_rank(total: int, world_size: int, num_workers: int, batch_size: int, group: bool) -> int:
    """Batches every rank yields in an exact pass over ``total`` samples (the same for every epoch).

    A slot of ``n`` samples forms ``ceil(n / B)`` batches, plus at most one more with modality grouping (one
    partial batch per modality), and never more than ``n``; the bound is the largest per-rank sum. A rank whose
    batches fall short of it splits its largest batches, so the bound is always reachable on one rank.
    """
    sizes = slot_sizes(total, world_size * num_workers)
    per_slot = [min(n, -(-n // batch_size) + (1 if group and n else 0)) for n in sizes]
    return max(sum(per_slot[r * num_workers : (r + 1) * num_workers]) for r in range(world_size))


def _slot_pieces(counts: Sequence[int], order: Sequence[int], n_slots: int) -> list[list[Piece]]:
    sizes = slot_sizes(sum(counts), n_slots)
    slots: list[list[Piece]] = [[] for _ in range(n_slots)]
    slot, need = 0, sizes[0] if sizes else 0
    for shard in order:
        start = 0
        while start < counts[shard]:
            while need == 0 and slot + 1 < n_slots:
                slot += 1
                need = sizes[slot]
            take = min(need, counts[shard] - start)
            slots[slot].append(Piece(shard, start, start + take))
            start += take
            need -= take
    return slots


def _equalize(rank_slots: list[SlotPlan], target: int) -> None:
    """Split the largest batches of one rank until it has ``target`` batches."""
    count = sum(len(s.batches) for s in rank_slots)
    while count < target:
        w, b = max(
            ((w, b) for w, slot in enumerate(rank_slots) for b in range(len(slot.batches))),
            key=lambda wb: (len(rank_slots[wb[0]].batches[wb[1]]), -wb[0], -wb[1]),
            default=(-1, -1),
        )
        if w < 0 or len(rank_slots[w].batches[b]) < 2:
            raise ValueError(
                f"a rank has {sum(s.num_samples for s in rank_slots)} samples, too few for the {target} batches "
                "every rank takes: use fewer GPUs or a larger dataset"
            )
        batch = rank_slots[w].batches[b]
        half = (len(batch) + 1) // 2
        rank_slots[w].batches[b : b + 1] = [batch[:half], batch[half:]]
        count += 1


def plan_exact_pass(
    counts: Sequence[int],
    is_image: Sequence[np.ndarray],
    lengths: Sequence[np.ndarray],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    group: bool,
    window: int,
) -> ExactPlan:
    """Plan one exact pass over the shards for every (rank, worker) slot.

    Args:
        counts: samples per shard.
        is_image: per shard, bool [n] image flags (used when ``group``).
        lengths: per shard, int [n] grouping lengths.
        world_size: number of ranks.
        num_workers: data workers per rank (>= 1).
        batch_size: samples per batch.
        seed: base seed; the same on every rank.
        epoch: epoch number (changes the shard order and the window shuffles).
        shuffle: shuffle shard order, windows and batch order.
        group: single-modality, length-sorted batches.
        window: batches per shuffle/grouping window.

    Returns:
        The plan; it is identical on every rank and worker that computes it with the same arguments.
    """
    if sum(counts) < world_size:
        raise ValueError(f"{sum(counts)} samples cannot feed {world_size} ranks")
    order = list(range(len(counts)))
    if shuffle:
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(counts))]
    n_slots = world_size * num_workers
    pieces = _slot_pieces(counts, order, n_slots)
    slots: list[list[SlotPlan]] = []
    for rank in range(world_size):
        row: list[SlotPlan] = []
        for worker in range(num_workers):
            slot_pieces = pieces[rank * num_workers + worker]
            plan = SlotPlan(slot_pieces)
            if plan.num_samples:
                img = np.concatenate([is_image[p.shard][p.start : p.stop] for p in slot_pieces])
                lens = np.concatenate([lengths[p.shard][p.start : p.stop] for p in slot_pieces])
                rng = np.random.default_rng([seed, epoch, rank, worker]) if shuffle else None
                plan.batches = form_batches(img.astype(bool), lens.astype(np.int64), batch_size, window, group, rng)
            row.append(plan)
        slots.append(row)
    target = exact_batches_per_rank(sum(counts), world_size, num_workers, batch_size, group)
    for row in slots:
        _equalize(row, target)
    return ExactPlan(slots, target)


def plan_global_order(
    counts: Sequence[int],
    *,
    world_size: int,
    num_workers: int,
    batch_size: int,
    accumulation: int,
    seed: int,
    epoch: int,
    shuffle: bool,
) -> ExactPlan:
    """Plan a pass whose optimizer steps see the same samples whatever the number of ranks and workers.

    The shards (in a seeded per-epoch order when ``shuffle``) are one global sample sequence, cut into global
    batches of ``G = batch_size x world_size x accumulation`` samples. Micro-batch ``a`` of rank ``r`` in step ``k``
    is ``[kG + (a x world_size + r) x batch_size, ... + batch_size)``, so a run on one rank with micro-batch ``G``
    and a run on N ranks with micro-batch ``G / N`` train on the same samples, step by step. A rank's micro-batches
    go round-robin to its workers, the order in which the DataLoader returns them. The last ``total mod G``
    samples are not used (every rank takes the same number of steps). Modality grouping and shuffling inside
    shards are not available in this order. A micro-batch whose samples are all unusable is replaced by the
    worker's last good sample (as in the exact pass), which does depend on the layout.

    Raises:
        ValueError: fewer samples than one global batch.
    """
    total = int(sum(counts))
    per_step = batch_size * world_size * accumulation
    steps = total // per_step
    if steps == 0:
        raise ValueError(
            f"{total} samples cannot fill one global batch of {per_step} (micro-batch {batch_size} x {world_size} "
            f"ranks x {accumulation} accumulation): use a smaller global_batch_size or more data"
        )
    order = list(range(len(counts)))
    if shuffle:
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(counts))]
    starts = np.cumsum([0] + [int(counts[i]) for i in order])  # global position of each ordered shard's first sample

    def pieces_of(begin: int, end: int) -> list[Piece]:
        out = []
        while begin < end:
            j = int(np.searchsorted(starts, begin, side="right")) - 1  # ordered shard holding `begin`
            stop = min(end, int(starts[j + 1]))
            out.append(Piece(order[j], begin - int(starts[j]), stop - int(starts[j])))
            begin = stop
        return out

    slots = [[SlotPlan([]) for _ in range(num_workers)] for _ in range(world_size)]
    for rank in range(world_size):
        filled = [0] * num_workers  # samples planned so far per worker (a running count: no re-summing)
        for j in range(steps * accumulation):  # the rank's micro-batches in training order
            step, micro = divmod(j, accumulation)
            begin = step * per_step + (micro * world_size + rank) * batch_size
            slot = slots[rank][j % num_workers]
            first = filled[j % num_workers]
            filled[j % num_workers] += batch_size
            for piece in pieces_of(begin, begin + batch_size):
                last = slot.pieces[-1] if slot.pieces else None
                if last is not None and last.shard == piece.shard and last.stop == piece.start:
                    slot.pieces[-1] = Piece(last.shard, last.start, piece.stop)  # contiguous: one read
                else:
                    slot.pieces.append(piece)
            slot.batches.append(np.arange(first, first + batch_size, dtype=np.int64))
    return ExactPlan(slots, steps * accumulation)


def split_quota(total: int, num_workers: int, worker: int) -> int:
    """Return worker ``worker``'s share of ``total`` batches (shares differ by at most one)."""
    base, extra = divmod(total, num_workers)
    return base + (1 if worker < extra else 0)


class WindowBatcher:
    """Online version of ``form_batches`` for endless streams: add items, receive batches window by window.

    Memory stays bounded: only the current window and the carried remainders are held.

    Args:
        batch_size: samples per batch.
        window: batches per window.
        group: single-modality, length-sorted batches.
        rng: shuffles windows and batch order.
    """

    def __init__(self, batch_size: int, window: int, group: bool, rng: np.random.Generator | None) -> None:
        self.batch_size = batch_size
        self.span = max(1, window) * batch_size
        self.group = group
        self.rng = rng
        self._carried: list[tuple[object, bool, int]] = []
        self._window: list[tuple[object, bool, int]] = []

    def add(self, item: object, is_image: bool, length: int) -> list[list[object]]:
        """Add one item; return the batches completed by it (usually none)."""
        self._window.append((item, is_image, length))
        return self._cut(final=False) if len(self._window) >= self.span else []

    def flush(self) -> list[list[object]]:
        """Return every remaining item as batches."""
        return self._cut(final=True) if self._window or self._carried else []

    def _cut(self, final: bool) -> list[list[object]]:
        entries = self._carried + self._window
        is_image = np.array([e[1] for e in entries], dtype=bool)
        lengths = np.array([e[2] for e in entries], dtype=np.int64)
        carry: dict[bool, np.ndarray] = {}
        for mod in (True, False):
            ids = [i for i in range(len(self._carried)) if not self.group or is_image[i] == mod]
            if ids and (self.group or not mod):
                carry[mod] = np.asarray(ids, dtype=np.int64)
        window = np.arange(len(self._carried), len(entries), dtype=np.int64)
        batches = window_batches(window, is_image, lengths, carry, self.batch_size, self.group, self.rng, final)
        self._carried = [entries[int(i)] for ids in carry.values() for i in ids]
        self._window = []
        return [[entries[int(i)][0] for i in batch] for batch in batches]
