"""Command-line helpers shared by the user-facing commands (chat, export, the web demo, make_shards).

A mistake in what was typed ends the command with exit status 2 and one line on stderr that names the problem and
the fix, never a usage block or a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def command_name(prog: str) -> str:
    """The module a ``python -m`` program line runs (``python -m eve_lightning.chat`` -> ``eve_lightning.chat``)."""
    return prog.removeprefix("python -m ")


def usage_error(prog: str, message: str) -> NoReturn:
    """Print ``<command>: error: <message>`` as one line on stderr and exit with status 2.

    Args:
        prog: the program (``python -m eve_lightning.chat`` or ``eve_lightning.chat``).
        message: what is wrong and how to fix it, on one line.

    Raises:
        SystemExit: always, with code 2.
    """
    line = " ".join(message.split())  # one line whatever the message holds
    print(f"{command_name(prog)}: error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are one line on stderr (exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        """Report a parsing error in one line, pointing at ``--help``."""
        usage_error(self.prog, f"{message} (see {self.prog} --help)")
