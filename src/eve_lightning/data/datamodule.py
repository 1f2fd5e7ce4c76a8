"""``EveDataModule``: the LightningDataModule that streams shards for every EVE stage.

``family`` selects the model family's image rule: ``eve`` (EVE v1: fixed canvas, optional teacher view) or ``evev2``
(area about ``image_size ** 2``, 32 px cells, canvases sized per batch, no teacher; ``geometry.evev2_geometry``).

``task="pretrain"`` defaults to the ``plain`` template and an endless resampled stream cut into epochs of
``stream.epoch_samples`` samples; ``task="sft"`` defaults to ``vicuna_v1``, one exact pass per epoch and modality/length
grouping. Validation is always one exact, unshuffled pass. Rank and world size come from ``torch.distributed``
when it is initialized, else from the ``rank``/``world_size`` arguments, else from the ``RANK``/``WORLD_SIZE``
environment variables; every rank yields the same number of batches.

Each DataLoader runs with ``batch_size=None``: workers yield collated batches (see ``collate`` for the keys and
``eve_lightning.constants`` for the contract). Loading, streaming, packing and demo-set options come in typed groups
(``data.options``), one nested node each in ``conf/data``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from eve_lightning.constants import MAX_IMAGE_PIXELS
from eve_lightning.data.collate import Canvas
from eve_lightning.data.geometry import Family
from eve_lightning.data.options import (
    LoaderOptions,
    PackingOptions,
    StreamOptions,
    SyntheticShapesSpec,
    as_options,
    synthetic_spec,
)
from eve_lightning.data.shards import (
    INDEX_FILE,
    DataSizeError,
    DataSourceError,
    ShardInfo,
    read_index,
    resolve_shards,
)
from eve_lightning.data.stream import SampleConfig, ShardStream
from eve_lightning.data.tokenizer import Backend, TextTokenizer, load_tokenizer

log = logging.getLogger(__name__)
Task = Literal["pretrain", "sft"]
DEMO_SIDE_EVEV2 = 672  # the demo set EVEv2 runs read (see EveDataModule.demo_max_side)
_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"template": "plain", "resampled": True, "group_by_modality_length": False},
    "sft": {"template": "vicuna_v1", "resampled": False, "group_by_modality_length": True},
}


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Return (rank, world size): torch.distributed if initialized, else the arguments, else the environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    r = rank if rank is not None else int(os.environ.get("RANK", "0"))
    return r, world


class EpochLoader(DataLoader):
    """DataLoader that tells its ``ShardStream`` the epoch before each pass (works without persistent workers).

    The epoch comes from ``epoch_fn`` (the Trainer's current epoch, so a resumed run continues the sequence);
    without it the loader counts its own passes.
    """

    def __init__(
        self,
        dataset: ShardStream,
        epoch_fn: Callable[[], int | None] | None = None,
        skip_fn: Callable[[int], int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn
        self._skip_fn = skip_fn
        self._passes = 0

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch_fn() if self._epoch_fn is not None else None
        epoch = self._passes if epoch is None else epoch
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.dataset.set_skip(self._skip_fn(epoch) if self._skip_fn is not None else 0)  # type: ignore[attr-defined]
        self._passes += 1
        return super().__iter__()


class EveDataModule(L.LightningDataModule):
    """Streams WebDataset shards written by ``eve_lightning.data.make_shards`` (see the Hydra ``conf/data``).

    Args:
        train_shards: shard directory (with ``index.json``), index file, tar glob/brace pattern, or a list of them.
        val_shards: the same for validation, or None.
        task: ``pretrain`` or ``sft``; sets the defaults of ``template``, ``stream.resampled`` and
            ``stream.group_by_modality_length`` (each None = task default).
        template: chat template name (``plain``, ``vicuna_v1`` or a registered one).
        tokenizer: local HF tokenizer directory or SentencePiece ``.model`` file; None = mistral-common's
            LLaMA-style model (demo / tiny setups).
        tokenizer_backend: ``auto``, ``sentencepiece`` or ``hf`` (see ``data.tokenizer``).
        image_size: EVE canvas side, 672 or 1344; EVEv2: the resize rule's ``max_size`` (800 or 1600).
        teacher_view: also produce the 336 px teacher (CLIP) view (EVE v1 only).
        exact_teacher: bicubic teacher resize even from pre-resized shards (slower).
        max_pixels: images with more pixels are dropped (and counted) before they are decoded.
        max_length: limit on the expanded sequence length (text + image tokens).
        batch_size: samples per batch per rank.
        val_batch_size: validation batch size (None = ``batch_size``).
        seed: base seed (must be the same on every rank).
        rank: rank override when torch.distributed is not initialized.
        world_size: world size override when torch.distributed is not initialized.
        accumulation: micro-batches per optimizer step and rank (used by ``stream.order=global``); the training
            config derives it from ``global_batch_size``.
        loader: DataLoader processes and memory (``LoaderOptions`` or a mapping of its fields).
        stream: which samples each rank and worker streams, in which order (``StreamOptions`` or a mapping).
        packing: how samples become batch rows (``PackingOptions`` or a mapping).
        synthetic: the demo set to generate when the training shards lie inside its ``root`` and have no index yet
            (``SyntheticShapesSpec`` or a mapping), or None: shards are never generated.
        family: ``eve`` (EVE v1) or ``evev2``: the image rule and token geometry of the model (the training config
            derives it from the model).
        canvas: canvas of the batches: None = the family's (EVE v1 ``fixed``; EVEv2 ``square``: the batch's longest
            band side), or ``rect`` (EVEv2: the batch's tallest x widest band, [N, 3, H, W]; needs a model that
            takes rectangular canvases).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        task: Task = "sft",
        template: str | None = None,
        tokenizer: str | None = None,
        tokenizer_backend: Backend = "auto",
        image_size: int = 672,
        teacher_view: bool = True,
        exact_teacher: bool = False,
        max_pixels: int = MAX_IMAGE_PIXELS,
        max_length: int = 2048,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        accumulation: int = 1,
        loader: LoaderOptions | Mapping[str, Any] | None = None,
        stream: StreamOptions | Mapping[str, Any] | None = None,
        packing: PackingOptions | Mapping[str, Any] | None = None,
        synthetic: SyntheticShapesSpec | Mapping[str, Any] | None = None,
        family: Family = "eve",
        canvas: Canvas | None = None,
    ) -> None:
        super().__init__()
        if task not in _TASK_DEFAULTS:
            raise ValueError(f"task must be one of {sorted(_TASK_DEFAULTS)}, got {task!r}")
        self.loader_options = as_options(LoaderOptions, loader)
        self.stream_options = as_options(StreamOptions, stream)
        self.packing_options = as_options(PackingOptions, packing)
        self.synthetic = synthetic_spec(synthetic)
        defaults = _TASK_DEFAULTS[task]
        self.train_source = _plain(train_shards)
        self.val_source = _plain(val_shards) if val_shards else None
        self.task = task
        self.template = template or defaults["template"]
        self.order = self.stream_options.order
        self.accumulation = accumulation
        global_order = self.order == "global"  # a fixed pass: the task's resampling and grouping defaults do not apply
        resampled, group = self.stream_options.resampled, self.stream_options.group_by_modality_length
        self.resampled = (defaults["resampled"] and not global_order) if resampled is None else bool(resampled)
        self.group = (defaults["group_by_modality_length"] and not global_order) if group is None else bool(group)
        self.tokenizer_path = tokenizer
        self.tokenizer_backend = tokenizer_backend
        self.sample_cfg = SampleConfig(
            self.template, image_size, max_length, teacher_view, exact_teacher, max_pixels, family, canvas
        )
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed = seed
        self._rank_arg, self._world_arg = rank, world_size
        self._tokenizer: TextTokenizer | None = None
        self._train_shards: list[ShardInfo] | None = None
        self._val_shards: list[ShardInfo] | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, self.tokenizer_backend)
        return self._tokenizer

    @property
    def tokenizer_source(self) -> str:
        """Path of the tokenizer in use (a SentencePiece file or a tokenizer folder), for exports."""
        return self.tokenizer.source

    def prepare_data(self) -> None:
        """Generate the demo data set when the training shards are the demo set's and do not exist yet.

        Existing shards are used as they are; if they were generated with other settings than configured (sample
        counts, ``synthetic.max_turns``, ...), a warning names the differences. Shards outside ``synthetic.root`` are
        never generated, and a root holding files the generator did not write is never written over.

        Raises:
            DataSourceError: the training folder has no index and is not the demo set's to generate.
        """
        if self.synthetic is None or not isinstance(self.train_source, str):
            return
        from eve_lightning.data import synthetic_shapes

        train, root = Path(self.train_source), Path(self.synthetic.root)
        params = self.synthetic.generator_params(self.demo_max_side)
        if (train / INDEX_FILE).is_file():  # existing shards are kept; a difference is reported
            wanted, recorded = synthetic_shapes.generation_params(**params), synthetic_shapes.recorded_params(root)
            changed = {k: (recorded[k], v) for k, v in wanted.items() if recorded and recorded.get(k) != v}
            if changed:
                log.warning(
                    "demo data in %s was generated with other settings (recorded, configured): %s; using it as it "
                    "is. To regenerate, delete that folder.",
                    root,
                    ", ".join(f"{k} {a} vs {b}" for k, (a, b) in changed.items()),
                )
            return
        if not _inside(train, root):
            return  # not the demo set: setup() names the missing index and make_shards
        if not synthetic_shapes.owns_folder(root):
            raise DataSourceError(
                f"{train} has no {INDEX_FILE}, and the demo folder {root} holds files the demo generator did not "
                f"write, so no demo set is generated over them: build shards with `python -m "
                f"eve_lightning.data.make_shards --out {train} ...`, or set paths.data_dir to another folder"
            )
        summaries = synthetic_shapes.generate(root, **params, workers=os.cpu_count() or 1, overwrite=True)
        for name, summary in summaries.items():
            log.info("demo data %s: %s", name, summary.line())

    @property
    def demo_max_side(self) -> int:
        """Resolution the demo set's pictures are stored at: the canvas side (EVE v1), else the 672 px set.

        EVEv2 shares the EVE v1 demo set at 672 px (pictures of at most 1024 px that its own rule resizes when
        they are loaded): the demo shards are the same for both families.
        """
        return self.sample_cfg.image_size if self.sample_cfg.family == "eve" else DEMO_SIDE_EVEV2

    def preflight(self) -> None:
        """Start-up check, before any training is set up: the shards exist, have an index and can feed the layout.

        A demo set that `prepare_data` will generate is checked after it is generated instead.

        Raises:
            DataSourceError: missing shards or index (the message names make_shards).
            DataSizeError: too few samples for ranks, workers and batch size.
        """
        if self.synthetic is not None and isinstance(self.train_source, str):
            train = Path(self.train_source)
            if _inside(train, Path(self.synthetic.root)) and not (train / INDEX_FILE).is_file():
                return
        self.setup("fit")
        if self.val_source:
            self.setup("validate")

    def setup(self, stage: str | None = None) -> None:
        """Find the shards (raises `DataSourceError`) and check that they can feed the layout (`DataSizeError`)."""
        need_columns = not self.resampled
        if self._train_shards is None and stage in (None, "fit"):
            self._train_shards = resolve_shards(self.train_source, columns=need_columns)
            self._check_resolution(self.train_source)
            self._check_size()
        if self._val_shards is None and self.val_source and stage in (None, "fit", "validate"):
            self._val_shards = resolve_shards(self.val_source, columns=True)
            self._check_resolution(self.val_source)

    def _check_resolution(self, source: str | Sequence[str]) -> None:
        """Refuse shards whose images make_shards resized below the resolution this stage trains at.

        ``make_shards --max-side`` records the size in ``index.json`` (``max_side``, and ``max_side_family`` for
        EVEv2's rule); images stored smaller than the stage's resolution would train smaller than their sources, with
        nothing in the run saying so (a 1344 px HD stage on shards built at 672, EVEv2's 1600 px stages on 800 px
        shards). A generated demo set, stored at 672 px for both families on purpose, is not checked.
        """
        if not isinstance(source, str):
            return
        path = Path(source)
        index = path / INDEX_FILE if path.is_dir() else path
        if index.name != INDEX_FILE or not index.is_file():
            return
        from eve_lightning.data import synthetic_shapes

        if synthetic_shapes.is_demo_split(index.parent):
            return
        info = read_index(index.parent)
        side, need = info.get("max_side"), self.sample_cfg.image_size
        if side is None or side >= need:
            return
        family = info.get("max_side_family", "eve")
        flag = " --family evev2" if self.sample_cfg.family == "evev2" else ""
        raise DataSourceError(
            f"{source} holds images make_shards resized for {side} px ({family}), but this stage trains at {need} px: "
            f"they would train smaller than their sources. Rebuild the shards with `python -m "
            f"eve_lightning.data.make_shards --max-side {need}{flag} ...` (or without --max-side)"
        )

    def _check_size(self) -> None:
        """Plan the first training pass now, in the main process, so that too small a set fails at start-up."""
        total = sum(s.num_samples for s in self._train_shards or [])
        if total == 0:
            raise DataSizeError(f"{self.train_source} holds no samples: build shards with make_shards")
        stream = self.train_stream()
        try:
            if not self.resampled:
                stream.plan(0)
        except ValueError as err:
            workers = self.loader_options.num_workers
            workers = f"{workers} loader workers, " if workers > 1 else ""
            raise DataSizeError(
                f"{self.train_source} has {total} samples, too few for {workers}batch size {self.batch_size} on "
                f"{stream.world_size} rank(s) ({err}): lower data.loader.num_workers or data.batch_size, or add samples"
            ) from None

    def _epoch(self) -> int | None:
        trainer = self.trainer
        return int(trainer.current_epoch) if trainer is not None else None

    def _stream(self, shards: list[ShardInfo], **options: Any) -> ShardStream:
        """A ``ShardStream`` of this rank with the module's shared options (``options`` override them)."""
        rank, world = resolve_rank_world(self._rank_arg, self._world_arg)
        shared: dict[str, Any] = {
            "collate": self.packing_options.collate,
            "pack_length": self.packing_options.pack_length,
            "pad_to_multiple_of": self.packing_options.pad_to_multiple_of,
            "seed": self.seed,
            "rank": rank,
            "world_size": world,
        }
        return ShardStream(shards, self.tokenizer, self.sample_cfg, **{**shared, **options})

    def train_stream(self) -> ShardStream:
        """Build the training ``ShardStream`` of this rank."""
        self.setup("fit")
        assert self._train_shards is not None
        batches_per_rank = None
        if self.resampled:
            _, world = resolve_rank_world(self._rank_arg, self._world_arg)
            total = self.stream_options.epoch_samples or sum(s.num_samples for s in self._train_shards)
            batches_per_rank = max(1, -(-total // (world * self.batch_size)))
        return self._stream(
            self._train_shards,
            batch_size=self.batch_size,
            resampled=self.resampled,
            batches_per_rank=batches_per_rank,
            shuffle=self.stream_options.shuffle,
            group_by_modality=self.group,
            window=self.stream_options.group_window,
            shuffle_buffer=self.stream_options.shuffle_buffer,
            num_workers=self.loader_options.num_workers,
            max_drop_rate=self.stream_options.max_drop_rate,
            order=self.order,
            accumulation=self.accumulation,
        )

    def val_stream(self) -> ShardStream | None:
        """Build the validation ``ShardStream`` of this rank (one exact, unshuffled pass), or None."""
        self.setup("validate")
        if not self._val_shards:
            return None
        return self._stream(
            self._val_shards,
            batch_size=self.val_batch_size,
            resampled=False,
            shuffle=False,
            group_by_modality=False,
            num_workers=self.loader_options.val_workers,
        )

    # -- exact resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position of the training stream, saved in every checkpoint: epoch and batches already trained on.

        The stream is a pure function of (seed, epoch, rank, worker), so this is all a resume needs.
        """
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        processed = int(progress.processed)
        return {"epoch": int(trainer.current_epoch), "batches": processed, "accumulation": self.accumulation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state) if state else None

    def _resume_skip(self, epoch: int) -> int:
        """Batches to skip in this pass: those trained on before the checkpoint, once, in its epoch."""
        resume, self._resume = getattr(self, "_resume", None), None
        if resume and resume.get("epoch") == epoch:
            batches = int(resume["batches"])
            saved = int(resume.get("accumulation") or self.accumulation)
            if self.order == "global" and saved != self.accumulation:
                # the global order counts optimizer steps: the same steps are other micro-batches now
                batches = batches // saved * self.accumulation
            log.info("resuming the data stream at batch %d of epoch %d", batches, epoch)
            return batches
        return 0

    def _loader(
        self,
        stream: ShardStream,
        workers: int,
        epoch_fn: Callable[[], int | None] | None,
        skip_fn: Callable[[int], int] | None = None,
    ) -> EpochLoader:
        options = self.loader_options
        extra: dict[str, Any] = {}
        if workers > 0:
            extra["persistent_workers"] = options.persistent_workers
            if options.prefetch_factor is not None:
                extra["prefetch_factor"] = options.prefetch_factor
        return EpochLoader(stream, epoch_fn, skip_fn, num_workers=workers, pin_memory=options.pin_memory, **extra)

    def train_dataloader(self) -> EpochLoader:
        return self._loader(self.train_stream(), self.loader_options.num_workers, self._epoch, self._resume_skip)

    def val_dataloader(self) -> EpochLoader | list:
        stream = self.val_stream()
        if stream is None:
            return []
        return self._loader(stream, self.loader_options.val_workers, lambda: 0)


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _plain(value: str | Sequence[str]) -> str | list[str]:
    """Turn Hydra ListConfig values into plain Python (no live config objects in workers)."""
    return value if isinstance(value, str) else [str(v) for v in value]
