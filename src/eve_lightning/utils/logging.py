"""Rank-aware logging: only global rank 0 speaks unless asked.

The rank is read from the environment, so it works before the process group exists.
"""

from __future__ import annotations

import logging
import os


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return global_rank() == 0 or getattr(record, "all_ranks", False)


def get_logger(name: str) -> logging.Logger:
    """A logger that is silent on ranks other than 0 (pass `extra={"all_ranks": True}` to override)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
