"""Typed option groups of ``EveDataModule``: loading, streaming, packing, and the synthetic demo set.

Each group is a frozen dataclass whose fields are the keys of one nested node of ``conf/data`` (``data.loader``,
``data.stream``, ``data.packing``, ``data.synthetic``). ``as_options`` turns such a node (a plain mapping once Hydra
has converted it) into its dataclass; a key the group does not know stops with an error naming it, the keys the
group has, and the node, so a misspelt override never passes silently. Values are checked when a group is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Literal, TypeVar

from eve_lightning.data import synthetic_shapes

CollateMode = Literal["padded", "packed"]
Order = Literal["rank", "global"]
COLLATE_MODES = ("padded", "packed")
ORDERS = ("rank", "global")
T = TypeVar("T")


class OptionsError(ValueError):
    """An option group with an unknown key, a missing key or an impossible value; the message names the fix."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise OptionsError(message)


def _share(value: float | None, key: str) -> None:
    _need(value is None or 0.0 <= float(value) <= 1.0, f"{key} is a share, in [0, 1]; got {value}")


@dataclass(frozen=True)
class LoaderOptions:
    """How the DataLoaders run (node ``data.loader``).

    Attributes:
        num_workers: training loader processes per rank (0 = load in the training process).
        val_num_workers: validation loader processes per rank (None = ``num_workers``).
        pin_memory: pin batches in host memory for faster host-to-device copies (GPU machines).
        persistent_workers: keep the workers alive between epochs.
        prefetch_factor: batches prefetched per worker (None = PyTorch's default).
    """

    num_workers: int = 4
    val_num_workers: int | None = None
    pin_memory: bool = True
    persistent_workers: bool = False
    prefetch_factor: int | None = 2

    NODE: ClassVar[str] = "data.loader"

    def __post_init__(self) -> None:
        _need(self.num_workers >= 0, f"{self.NODE}.num_workers must be >= 0, got {self.num_workers}")
        _need(
            self.val_num_workers is None or self.val_num_workers >= 0,
            f"{self.NODE}.val_num_workers must be >= 0 or null (= num_workers), got {self.val_num_workers}",
        )
        _need(
            self.prefetch_factor is None or self.prefetch_factor >= 1,
            f"{self.NODE}.prefetch_factor must be >= 1 or null, got {self.prefetch_factor}",
        )

    @property
    def val_workers(self) -> int:
        """Validation loader processes per rank."""
        return self.num_workers if self.val_num_workers is None else self.val_num_workers


@dataclass(frozen=True)
class StreamOptions:
    """Which samples each rank and worker streams, in which order (node ``data.stream``).

    Attributes:
        resampled: endless resampled stream cut into epochs of ``epoch_samples`` (else one exact pass per epoch);
            None = the task's default (pretrain: resampled; sft: exact).
        group_by_modality_length: single-modality, length-sorted batches within each window; None = task default.
        epoch_samples: resampled streams: samples per epoch over all ranks (None = the shard set's size).
        shuffle: shuffle the training data (shard order, windows and batch order, or the shuffle buffer).
        shuffle_buffer: resampled streams: raw samples held per worker for shuffling.
        group_window: batches per shuffle/grouping window.
        max_drop_rate: share of unusable training samples tolerated per worker before the run stops (None = no
            limit); drops are always counted and logged as ``data/dropped``.
        order: ``rank`` (each rank streams its own share) or ``global``: every optimizer step trains on the same
            samples whatever the number of GPUs, workers and accumulation steps (one fixed pass per epoch; no
            resampling, no modality grouping).
    """

    resampled: bool | None = None
    group_by_modality_length: bool | None = None
    epoch_samples: int | None = None
    shuffle: bool = True
    shuffle_buffer: int = 1000
    group_window: int = 16
    max_drop_rate: float | None = 0.1
    order: Order = "rank"

    NODE: ClassVar[str] = "data.stream"

    def __post_init__(self) -> None:
        _need(self.order in ORDERS, f"{self.NODE}.order must be 'rank' or 'global', got {self.order!r}")
        _need(
            self.epoch_samples is None or self.epoch_samples >= 1,
            f"{self.NODE}.epoch_samples must be >= 1 or null (= the shard set's size), got {self.epoch_samples}",
        )
        _need(self.shuffle_buffer >= 1, f"{self.NODE}.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        _need(self.group_window >= 1, f"{self.NODE}.group_window must be >= 1, got {self.group_window}")
        _share(self.max_drop_rate, f"{self.NODE}.max_drop_rate")


@dataclass(frozen=True)
class PackingOptions:
    """How samples become rows of a batch (node ``data.packing``).

    Attributes:
        collate: ``padded`` (one sample per row) or ``packed`` (several per row: ``eve_lightning.data.collate``).
        pack_length: packed rows' budget in expanded tokens (None = ``max_length``).
        pad_to_multiple_of: round the id tensor width up to a multiple of this.
    """

    collate: CollateMode = "padded"
    pack_length: int | None = None
    pad_to_multiple_of: int = 1

    NODE: ClassVar[str] = "data.packing"

    def __post_init__(self) -> None:
        _need(
            self.collate in COLLATE_MODES,
            f"{self.NODE}.collate must be 'padded' or 'packed', got {self.collate!r}",
        )
        _need(
            self.pack_length is None or self.pack_length >= 1,
            f"{self.NODE}.pack_length must be >= 1 or null (= max_length), got {self.pack_length}",
        )
        _need(
            self.pad_to_multiple_of >= 1, f"{self.NODE}.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}"
        )


@dataclass(frozen=True)
class SyntheticShapesSpec:
    """The procedural shapes demo set to generate when its shards are missing (node ``data.synthetic``).

    The DataModule generates it under ``root`` (``root/{pretrain,sft}/{train,val}``) when the training shards lie
    inside ``root`` and have no index yet, and only in a folder that is new, empty or a demo set's own.

    Attributes:
        root: the demo set's own folder.
        samples: training samples per task.
        held_out: held-out samples per task (None = 5 % of ``samples``, at least 50).
        max_turns: most questions per image conversation.
        turns: ``any``, or ``independent``: no turn answerable from the text of the others
            (``synthetic_shapes.pick_turns``).
        shuffled_captions: share of captions that list the objects in random order, not left to right.
        answers: answer form of object questions: ``short`` (``red.``) or ``restated`` (``the circle is red.``).
        shape_first_captions: share of training captions that name each shape first.
    """

    root: str
    samples: int = 2000
    held_out: int | None = None
    max_turns: int = 3
    turns: str = "any"
    shuffled_captions: float = 0.0
    answers: str = "short"
    shape_first_captions: float = 0.0

    NODE: ClassVar[str] = "data.synthetic"

    def __post_init__(self) -> None:
        _need(self.samples >= 1, f"{self.NODE}.samples must be >= 1 (training samples per task), got {self.samples}")
        _need(
            self.held_out is None or self.held_out >= 1,
            f"{self.NODE}.held_out must be >= 1 or null (5 % of samples, >= 50), got {self.held_out}",
        )
        _need(self.max_turns >= 1, f"{self.NODE}.max_turns must be >= 1, got {self.max_turns}")
        turns, answers = synthetic_shapes.TURNS, synthetic_shapes.ANSWERS
        _need(self.turns in turns, f"{self.NODE}.turns must be one of {', '.join(turns)}, got {self.turns!r}")
        _need(self.answers in answers, f"{self.NODE}.answers must be one of {', '.join(answers)}, got {self.answers!r}")
        _share(self.shuffled_captions, f"{self.NODE}.shuffled_captions")
        _share(self.shape_first_captions, f"{self.NODE}.shape_first_captions")

    def generator_params(self, max_side: int) -> dict[str, Any]:
        """Keyword arguments of ``synthetic_shapes.generate`` / ``generation_params`` for images of ``max_side`` px."""
        held_out = self.held_out if self.held_out is not None else max(50, self.samples // 20)
        return {
            "num_pretrain": self.samples,
            "num_sft": self.samples,
            "num_val": held_out,
            "seed": 0,
            "max_side": max_side,
            "max_turns": self.max_turns,
            "turns": self.turns,
            "shuffled_captions": self.shuffled_captions,
            "answers": self.answers,
            "shape_first_captions": self.shape_first_captions,
        }


def as_options(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """``value`` as an instance of the option group ``cls``: an instance as is, a mapping checked key by key.

    None gives the group's defaults.

    Raises:
        OptionsError: ``value`` is no mapping, has a key ``cls`` does not know, or lacks a required one.
    """
    node = cls.NODE  # type: ignore[attr-defined]
    if value is None:
        value = {}
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise OptionsError(f"{node} must be a mapping of {cls.__name__} options, got {type(value).__name__}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise OptionsError(
            f"{node} has no option {', '.join(unknown)}: its options are {', '.join(known)} "
            f"(check the spelling in conf/data or on the command line)"
        )
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in value]  # type: ignore[arg-type]
    if missing:
        raise OptionsError(f"{node} needs {', '.join(missing)}: set {', '.join(f'{node}.{m}' for m in missing)}")
    return cls(**value)


def synthetic_spec(value: SyntheticShapesSpec | Mapping[str, Any] | None) -> SyntheticShapesSpec | None:
    """The demo set to generate, or None (``data.synthetic: null``: shards are never generated)."""
    return None if value is None else as_options(SyntheticShapesSpec, value)
