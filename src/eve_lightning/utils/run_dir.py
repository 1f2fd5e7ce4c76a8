"""Clean-up of a run directory that a run refused at start-up leaves behind."""

from __future__ import annotations

import shutil
from pathlib import Path

MULTIRUN_FILE = "multirun.yaml"  # what Hydra writes in a sweep folder before its first job


def discard_unused_run_dir(run_dir: Path, log_dir: Path, job_name: str) -> None:
    """Remove a run dir that holds nothing but Hydra's start-up files, and the empty folders above it (to log_dir).

    A run refused at start-up leaves no trace; a run dir with anything else in it (checkpoints, metrics) is kept,
    and so is a sweep folder that still holds another job. `job_name` names Hydra's job log (`<job_name>.log`).
    """
    if not run_dir.is_dir():
        return
    hydra_files = {f"{job_name}.log"}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] != ".hydra" and str(rel) not in hydra_files:
            return
    shutil.rmtree(run_dir)
    log_dir = log_dir.resolve()
    parent = run_dir.resolve().parent
    while parent != log_dir and log_dir in parent.parents and {p.name for p in parent.iterdir()} <= {MULTIRUN_FILE}:
        (parent / MULTIRUN_FILE).unlink(missing_ok=True)  # a sweep folder with no job left in it
        parent.rmdir()
        parent = parent.parent
