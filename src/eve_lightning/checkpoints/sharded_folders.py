"""Checkpoint folders of the sharded strategies: DeepSpeed ZeRO folders read weights-only, FSDP sharded ones refused.

A DeepSpeed checkpoint folder (what Lightning's DeepSpeedStrategy writes) holds a `latest` file naming a tag and
`<tag>/` with one model-states file (ZeRO-1/2: `mp_rank_00_model_states.pt`; ZeRO-3: one per rank) and one
optimizer-states file per data-parallel rank. The fp32 master weights live flattened in the optimizer files:

- ZeRO-1/2: per parameter group g, the ranks' `single_partition_of_fp32_groups[g]` concatenated in rank order
  form one flat vector; the group's parameters lie in it back to back, in the order of `param_shapes[g]`, with
  alignment padding only at the end.
- ZeRO-3: each rank's `fp32_flat_groups` (one tensor per sub-group) concatenated form that rank's flat
  vector; every parameter of `param_shapes` (all groups, in order) takes ceil(numel / ranks) elements of each
  rank's vector; the ranks' pieces concatenated, cut to numel, are the parameter.

Frozen parameters are in the model-states files (`frozen_param_fragments`: whole under ZeRO-1/2, each rank's
piece under ZeRO-3), buffers in `module`, tied parameters in `shared_params`. Everything is read with
`safe_load`, so no file of the folder can run code, and DeepSpeed itself is not needed.

Lightning's FSDP strategy writes sharded folders (`meta.pt` + `*.distcp` + a pickled `.metadata`) only when
`state_dict_type=sharded`; they are refused with the fix (our preset writes one full `.ckpt` instead).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from eve_lightning.checkpoints.safe_load import TornCheckpointError, check_loadable, safe_load

LATEST = "latest"
LIGHTNING_PREFIX = "_forward_module."  # Lightning wraps the LightningModule in the DeepSpeed engine
_DEEPSPEED_KEYS = {
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
    "checkpoint_parallel_dimensions",
}  # fmt: skip
_RANK = re.compile(r"zero_pp_rank_(\d+)_")


class CheckpointFolderError(ValueError):
    """A checkpoint folder that cannot be read as it is; the message names the fix."""


def is_deepspeed_folder(path: Path) -> bool:
    return path.is_dir() and (path / LATEST).is_file()


def is_fsdp_sharded_folder(path: Path) -> bool:
    return path.is_dir() and (path / "meta.pt").is_file() and any(path.glob("*.distcp"))


def refuse_fsdp_sharded(path: Path) -> None:
    raise CheckpointFolderError(
        f"{path} is a sharded FSDP checkpoint; its `.metadata` file is a pickle that could run code, so it is not "
        "read. Train with the fsdp preset's trainer.strategy.state_dict_type=full (one weights-only .ckpt), or "
        "use the run's stage export (<run dir>/export)"
    )


def tag_dir(folder: Path) -> Path:
    """`<folder>/<tag>` of a DeepSpeed folder, the tag read from its `latest` file (a plain name only)."""
    tag = (folder / LATEST).read_text().strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag) or tag in (".", ".."):
        raise CheckpointFolderError(f"{folder / LATEST} names the tag {tag!r}, which is not a folder name")
    here = folder / tag
    if not here.is_dir():
        raise TornCheckpointError(f"{folder} names the tag {tag!r} in `latest`, but {here} does not exist")
    return here


def verify_deepspeed_folder(folder: Path) -> None:
    """Check that every pickle file of the folder's tag loads weights-only (before DeepSpeed itself unpickles it).

    Raises:
        UnsafeCheckpointError: a file holds other objects (nothing of it ran).
        TornCheckpointError: a file is cut short, or the folder is not complete.
    """
    files = sorted(p for p in tag_dir(folder).rglob("*") if p.is_file() and p.suffix in (".pt", ".pth", ".bin"))
    if not any(p.name.endswith("model_states.pt") for p in files):
        raise TornCheckpointError(f"{folder} holds no *model_states.pt: not a complete DeepSpeed checkpoint")
    for path in files:
        check_loadable(path)


def _by_rank(files: list[Path]) -> list[Path]:
    ranked = sorted((int(m.group(1)), p) for p in files if (m := _RANK.search(p.name)))
    if [r for r, _ in ranked] != list(range(len(ranked))):
        raise TornCheckpointError(f"rank files {[p.name for p in files]} are not ranks 0..N-1: a file is missing")
    return [p for _, p in ranked]


def _zero12_params(shapes: list[dict[str, Any]], optim: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out = {}
    for g, group in enumerate(shapes):
        flat = torch.cat([o["single_partition_of_fp32_groups"][g].flatten() for o in optim])  # [group numel + pad]
        offset = 0
        for name, shape in group.items():
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].view(tuple(shape)).clone()
            offset += n
        if offset > flat.numel():
            raise TornCheckpointError(f"parameter group {g} needs {offset} values, its partitions hold {flat.numel()}")
    return out


def _zero3_params(shapes: list[dict[str, Any]], optim: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    world = len(optim)
    flats = [torch.cat([t.flatten() for t in o["fp32_flat_groups"]]) for o in optim]  # per rank [its pieces]
    out, offset = {}, 0
    for group in shapes:
        for name, shape in group.items():
            n = math.prod(shape)
            piece = math.ceil(n / world)
            whole = torch.cat([f[offset : offset + piece] for f in flats])[:n]  # [n]
            if whole.numel() != n:
                raise TornCheckpointError(f"{name}: the ranks' partitions hold {whole.numel()} of {n} values")
            out[name] = whole.view(tuple(shape)).clone()
            offset += piece
    return out


def _frozen_params(models: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in (models[0].get("frozen_param_shapes") or {}).items():
        n = math.prod(shape)
        pieces = [m["frozen_param_fragments"][name].flatten() for m in models]
        whole = pieces[0] if pieces[0].numel() == n else torch.cat(pieces)[:n]  # whole (ZeRO-1/2) or per rank
        out[name] = whole.view(tuple(shape)).clone()
    return out


def consolidate_deepspeed_folder(folder: Path) -> dict[str, Any]:
    """The folder's full fp32 weights as a Lightning-style checkpoint: {"state_dict": ..., client state keys}.

    Raises:
        UnsafeCheckpointError, TornCheckpointError, CheckpointFolderError: as `verify_deepspeed_folder`.
    """
    here = tag_dir(folder)
    optim_files = _by_rank(sorted(here.glob("*optim_states.pt")))
    if not optim_files:
        raise TornCheckpointError(f"{here} holds no *optim_states.pt: the fp32 weights are not in this folder")
    model_files = sorted(here.glob("*model_states.pt"))
    models = [safe_load(p) for p in (_by_rank(model_files) if len(model_files) > 1 else model_files)]
    optim = [safe_load(p)["optimizer_state_dict"] for p in optim_files]
    stage = int(optim[0].get("zero_stage", 0))
    main = models[0]
    world = int(main.get("dp_world_size") or len(optim_files))
    if len(optim_files) != world:
        raise TornCheckpointError(f"{here} was written by {world} ranks but holds {len(optim_files)} optimizer files")
    shapes = main["param_shapes"]
    if stage == 3:
        state = _zero3_params(shapes, optim)
    elif stage in (1, 2):
        state = _zero12_params(shapes, optim)
    else:
        raise CheckpointFolderError(f"{here}: ZeRO stage {stage} folders are not supported (stages 1, 2 and 3 are)")
    state.update(_frozen_params(models))
    module = main.get("module") or {}
    for name in main.get("buffer_names") or []:
        if name in module:
            state[name] = module[name].clone()
    for name, source in (main.get("shared_params") or {}).items():
        state[name] = state[source]
    state = {k.removeprefix(LIGHTNING_PREFIX): v for k, v in state.items()}
    client = {k: v for k, v in main.items() if k not in _DEEPSPEED_KEYS}
    return {**client, "state_dict": state}
