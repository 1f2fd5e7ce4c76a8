"""Crash-safe checkpoint files: written to a temporary name and moved into place only when complete.

A job killed while saving leaves `<name>.tmp` behind and the previous `<name>` (e.g. `last.ckpt`) intact, so the
next start resumes from the last complete checkpoint. Loading is always weights-only (`checkpoints.safe_load`:
a checkpoint cannot run code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from eve_lightning.checkpoints.safe_load import safe_load


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with write-then-rename saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half of one

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return safe_load(path, map_location=map_location or "cpu")
