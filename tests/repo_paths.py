"""Paths of the repository, for tests (importable from any test folder)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
