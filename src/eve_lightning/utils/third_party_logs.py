"""Third-party log lines that tell a user of this project nothing, dropped by narrow filters at package import.

- torchao (the FP8 layers, ``models.fp8``) logs a warning for each of its optional compiled kernels that does not
  load for the installed torch (every CPU machine, other CUDA builds). transformers imports torchao whenever it is
  installed, so every command printed these lines, before a one-line error too. The float8 training layers this
  project uses do not need those kernels; other torchao warnings still show.
- torch's pytree logs a deprecation warning when torchao registers its enums as constants at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


class DropRecords(logging.Filter):
    """A logging filter that drops the records ``matches`` accepts."""

    def __init__(self, matches: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.matches(record)


def torchao_optional_kernel(record: logging.LogRecord) -> bool:
    """The "Failed to load .../torchao/_C....so: ..." torchao logs for an optional compiled kernel."""
    message = record.getMessage()
    return message.startswith("Failed to load ") and "torchao" in message and ".so" in message


def pytree_enum_constant(record: logging.LogRecord) -> bool:
    """The deprecation note torch logs for enums registered as pytree constants (torchao does it at import)."""
    return "is an Enum subclass and is now natively supported by torch.compile" in record.getMessage()


FILTERS = {"torchao": torchao_optional_kernel, "torch.utils._pytree": pytree_enum_constant}


def install() -> None:
    """Add the filters to their loggers (once per logger, however often called)."""
    for name, matches in FILTERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropRecords) and f.matches is matches for f in logger.filters):
            logger.addFilter(DropRecords(matches))
