"""Loggers built from config with the setup they need (`conf/logger/*.yaml` name these as `_target_`).

`wandb_logger` is Lightning's `WandbLogger` made safe to start anywhere: it fails at once, naming the fix, when the
package is missing; it logs offline (and says so) when no API key is configured, so a run never waits on the
network; it keeps the exit summary short; under SLURM it takes a stable run id, so a requeued job continues its run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def wandb_offline_if_no_key() -> str | None:
    """Switch W&B to offline mode when no API key is configured, so a run never waits on the network."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return os.environ.get("WANDB_MODE")
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return None
    os.environ["WANDB_MODE"] = "offline"
    log.warning("W&B: no API key found (WANDB_API_KEY or `wandb login`): logging offline; `wandb sync` uploads later")
    return "offline"


def require_wandb() -> None:
    """Fail before any work starts when ``logger=wandb`` is asked for and the package is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "logger=wandb needs the wandb package, which is not installed in this environment: pip install wandb, "
            "or log to CSV alone with logger=csv"
        ) from err


def wandb_logger(name: str | None = None, id: str | None = None, **kwargs: Any):
    """`lightning.pytorch.loggers.WandbLogger(name=..., id=..., **kwargs)` after the checks above.

    Raises:
        RuntimeError: the wandb package is not installed (the message names `pip install wandb` and `logger=csv`).
    """
    require_wandb()
    wandb_offline_if_no_key()
    os.environ.setdefault("WANDB_QUIET", "true")  # no history/summary tables at exit: the run prints where it logged
    if id is None and name and os.environ.get("SLURM_JOB_ID"):
        id = re.sub(r"[^\w.-]", "-", name)  # stable across SLURM requeues
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(name=name, id=id, **kwargs)
