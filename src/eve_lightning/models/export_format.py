"""Our stage-export format: safetensors weights + config.json (+ tokenizer files), HF-style.

Layout of an export folder:
  config.json          {"format": "eve_lightning", "format_version": 1, "family": "eve" | "evev2",
                        "eve": EveConfig | EveV2Config, "llm": HF config, "teacher": teacher build args or null,
                        "stage": ..., "extra": {...}}; exports written before "family" existed are EVE v1
  model.safetensors    EveVLM state dict (llm.*, patch_embed.*, projector.*, aligner.*) or EveV2VLM state dict
                       (llm.* with the `moe_` vision experts, patch_embed.*), or sharded with
                       model.safetensors.index.json when larger than `max_shard_bytes`
  teacher.safetensors  only when the teacher has no local path (random test/demo teachers), so the next stage
                       aligns to the very same teacher
  tokenizer files      copied from the training run's tokenizer

Writing goes to a temporary sibling folder that is renamed into place when complete, so a reader never sees a
half-written export.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "eve_lightning"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
FAMILIES = ("eve", "evev2")  # EVE v1 (EveVLM) and EVEv2 (EveV2VLM)


def model_family(vlm: nn.Module) -> str:
    """The family of a VLM as recorded in exports and checkpoints: ``evev2`` for an EveV2VLM, else ``eve``."""
    from eve_lightning.models.evev2.model import EveV2VLM

    return "evev2" if isinstance(vlm, EveV2VLM) else "eve"


def config_family(config: dict[str, Any]) -> str:
    """The family recorded in an export's (or a checkpoint's) config; one written before the key is EVE v1."""
    family = str(config.get("family") or "eve")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} in the config: this eve_lightning knows {FAMILIES}")
    return family


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for key in sorted(state):
        t = state[key]
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    return [*shards, current] if current else shards


def write_safetensors(state: dict[str, torch.Tensor], folder: Path, stem: str, max_shard_bytes: int) -> None:
    """Write `state` as `<stem>.safetensors`, or as shards plus `<stem>.safetensors.index.json`."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    parts = _shards(state, max_shard_bytes)
    if len(parts) <= 1:
        save_file(parts[0] if parts else {}, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"{stem}-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())}}
    index["weight_map"] = weight_map
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))


def read_safetensors(folder: Path, stem: str) -> dict[str, torch.Tensor] | None:
    """Read `<stem>.safetensors` or its shards; None when neither exists."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        state = {}
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / name)))
        return state
    single = folder / f"{stem}.safetensors"
    return load_file(str(single)) if single.is_file() else None


def save_export(
    folder: str | Path,
    vlm: nn.Module,
    state: dict[str, torch.Tensor] | None = None,
    teacher_state: dict[str, torch.Tensor] | None = None,
    teacher_args: dict[str, Any] | None = None,
    tokenizer_files: list[str | Path] = (),
    stage: str | None = None,
    extra: dict[str, Any] | None = None,
    max_shard_bytes: int = 5 * 2**30,
    keep_other_files: bool = False,
) -> Path:
    """Write an export folder atomically.

    Args:
        folder: destination. Without `keep_other_files` it is replaced as a whole (a folder of our own, e.g. a
            run's export); with it, only the export's own files are replaced, each atomically, and the files of
            an earlier export there that the new one lacks are removed: nothing else in the folder is touched.
        vlm: the EveVLM (its configs are recorded; its weights too unless `state` is given).
        state: full EveVLM state dict, e.g. gathered from a sharded strategy; default `vlm.state_dict()`.
        teacher_state: teacher weights to store (only for teachers without a local path).
        teacher_args: how to rebuild the teacher (`build_teacher` kwargs), recorded in config.json.
        tokenizer_files: files to copy next to the weights (tokenizer.model, tokenizer_config.json, ...).
        stage: name of the stage that produced the weights.
        extra: anything else worth recording (step, run dir, git revision...).
        max_shard_bytes: shard size of the safetensors files.
        keep_other_files: replace only the export's files (see `folder`).

    Returns:
        The export folder.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_safetensors(state if state is not None else vlm.state_dict(), tmp, "model", max_shard_bytes)
    if teacher_state is not None:
        write_safetensors(teacher_state, tmp, "teacher", max_shard_bytes)
    for f in tokenizer_files:
        shutil.copy2(f, tmp / Path(f).name)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": model_family(vlm),
        "stage": stage,
        "eve": vlm.config.to_dict(),
        "llm": vlm.llm.config.to_dict(),
        "teacher": teacher_args,
        "tokenizer": [Path(f).name for f in tokenizer_files],
        "extra": extra or {},
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
    _readable(tmp)
    if keep_other_files and folder.is_dir():
        _replace_own_files(tmp, folder)
        return folder
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _readable(folder: Path) -> None:
    """Give the folder and its files the modes of ordinary files (the writers' temporaries are owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def export_files(folder: Path) -> set[str]:
    """Names of the files an export in `folder` consists of, read from its config and indexes (empty if none)."""
    try:
        config = read_export_config(folder)
    except (FileNotFoundError, ValueError):
        return set()
    names = {CONFIG_NAME, *config.get("tokenizer", [])}
    for stem in ("model", "teacher"):
        names.add(f"{stem}.safetensors")
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            names.add(index.name)
            names.update(json.loads(index.read_text()).get("weight_map", {}).values())
    return {n for n in names if (folder / n).is_file()}


def _replace_own_files(new: Path, folder: Path) -> None:
    """Move the files of the export in `new` into `folder` (config last), then drop the old export's leftovers."""
    stale = export_files(folder)
    names = sorted(p.name for p in new.iterdir())
    for name in [n for n in names if n != CONFIG_NAME] + [CONFIG_NAME]:
        os.replace(new / name, folder / name)  # atomic per file: a reader sees the old or the new file
        stale.discard(name)
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    new.rmdir()


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """config.json of an export; raises a clear error when the folder is not one."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an eve_lightning export: no {CONFIG_NAME}")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not an eve_lightning export (format={config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer eve_lightning (format {config['format_version']})")
    return config


def load_export_weights(
    folder: str | Path,
    vlm: nn.Module,
    teacher: nn.Module | None = None,
    allow_missing: Callable[[str], bool] | None = None,
) -> dict[str, list]:
    """Load an export's weights into already-built modules (strict on the VLM parts that exist).

    Aligner weights are skipped when the VLM has no aligner (inference).

    Args:
        folder: the export.
        vlm: the VLM to fill.
        teacher: the teacher to fill with the export's teacher weights, if it has any.
        allow_missing: VLM keys the export may lack (they keep their values), e.g. EVEv2's vision experts when
            stage 1.0 starts from a stage-0 export and copies the text weights into them afterwards.

    Returns:
        ``{"skipped": export keys left out, "missing": allowed VLM keys the export lacks}``.

    Raises:
        ValueError: missing or unexpected keys, naming the first few and the likely cause.
    """
    folder = Path(folder)
    read_export_config(folder)
    state = read_safetensors(folder, "model")
    if state is None:
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    skipped = []
    if getattr(vlm, "aligner", None) is None:
        skipped = [k for k in state if k.startswith("aligner.")]
        for k in skipped:
            del state[k]
    result = vlm.load_state_dict(state, strict=False)
    allowed = [k for k in result.missing_keys if allow_missing is not None and allow_missing(k)]
    missing = [k for k in result.missing_keys if k not in set(allowed)]
    if missing or result.unexpected_keys:
        hint = (
            "build the model with the export's config (config.json) or pick the matching model= preset"
            if not all(".moe_" in k for k in missing) or result.unexpected_keys
            else "the export has no EVEv2 vision experts (a stage-0 export): start from it with "
            "stage.init_copy_experts=true (stage evev2_s1_0), or add them with "
            "`python -m eve_lightning.export --copy-experts EXPORT OUT`"
        )
        raise ValueError(
            f"export {folder} does not fit the model: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}; {hint}"
        )
    if teacher is not None:
        tstate = read_safetensors(folder, "teacher")
        if tstate is not None:
            teacher.load_state_dict(tstate)
    return {"skipped": skipped, "missing": allowed}
