"""Helpers for training-run tests: config composition as the CLI does it, and the CLI itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.helpers.repo_paths import CONF, REPO

# Small, fast runs: 2 samples per device, 2 accumulation steps, no progress bar, CSV metrics only.
FAST = [
    "logger=csv",
    "data.batch_size=2",
    "global_batch_size=4",
    "data.loader.num_workers=0",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.stage_export.publish_to=[]",
]


def compose_train(overrides: list[str], root: Path, data_dir: Path, fast: bool = True) -> DictConfig:
    """Compose conf/train.yaml as the CLI would, with every path under `root` (and the FAST settings)."""
    paths = [f"paths.root_dir={root}", f"paths.data_dir={data_dir}", f"paths.output_dir={root}/run"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*(FAST if fast else []), *paths, *overrides])


def child_pythonpath(env: dict[str, str]) -> str:
    """``PYTHONPATH`` for a subprocess that imports ``tests.helpers``: the repository root, then what ``env`` had."""
    return os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m eve_lightning.train ARGS` in `cwd`, as a user would type it.

    The repository root is on the child's ``PYTHONPATH``, so ARGS can name the test callbacks of ``tests.helpers``.
    """
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = child_pythonpath(env)
    return subprocess.run(
        [sys.executable, "-m", "eve_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
