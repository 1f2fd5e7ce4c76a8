"""Which checkpoint a resume starts from: proved weights-only before any strategy unpickles it.

Lightning's FSDP loader and DeepSpeed's engine read checkpoints with plain pickle; every file they will read is
first loaded here weights-only (`safe_load`), so a crafted file stops the run at start-up and runs nothing.
`ckpt_path=last` takes the newest checkpoint that is complete: a torn `last.ckpt` (a copy or write cut off) is
passed over, with a warning naming it, for the newest complete step checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from eve_lightning.checkpoints.safe_load import TornCheckpointError, check_loadable
from eve_lightning.checkpoints.sharded_folders import (
    CheckpointFolderError,
    is_deepspeed_folder,
    is_fsdp_sharded_folder,
    refuse_fsdp_sharded,
    verify_deepspeed_folder,
)
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def check_resume_source(path: str | Path) -> None:
    """Raise unless `path` (a `.ckpt` file or a DeepSpeed folder) loads weights-only.

    Raises:
        UnsafeCheckpointError: it holds code (nothing ran).
        TornCheckpointError: it is incomplete.
        CheckpointFolderError: a folder that is no loadable checkpoint.
    """
    path = Path(path)
    if is_fsdp_sharded_folder(path):
        refuse_fsdp_sharded(path)
    if path.is_dir():
        if not is_deepspeed_folder(path):
            raise CheckpointFolderError(f"{path} is a folder but no DeepSpeed checkpoint (no `latest` file)")
        verify_deepspeed_folder(path)
    else:
        check_loadable(path)


def newest_complete(candidates: list[Path]) -> Path | None:
    """The newest of `candidates` (by modification time) that is complete; torn ones are passed over with a warning.

    An unsafe file is not passed over: it raises (someone put it there; resuming from an older one would hide it).
    """
    torn = []
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            check_resume_source(path)
        except TornCheckpointError as err:
            torn.append(path)
            log.warning("checkpoint %s is incomplete, passed over (%s)", path, str(err).split(" (", 1)[-1].rstrip(")"))
            continue
        if torn:
            log.warning("ckpt_path=last: resuming from %s, the newest complete checkpoint (not %s)", path, torn[0])
        return path
    return None


def resume_candidates(checkpoint_dirs: list[Path]) -> list[Path]:
    """Every checkpoint in these folders: `last.ckpt` and the step checkpoints (files, or DeepSpeed folders)."""
    found = []
    for folder in checkpoint_dirs:
        found += [p for p in folder.glob("*.ckpt") if p.is_file() or is_deepspeed_folder(p)]
    return found


__all__ = ["CheckpointFolderError", "check_resume_source", "newest_complete", "resume_candidates"]
