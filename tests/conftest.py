"""Shared fixtures: the tiny model config, a tiny random export, small generated demo sets, and GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path


def _share_the_cores_between_xdist_workers() -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), each worker gets an equal share of the cores for torch's threads.

    Every worker is a process with its own OpenMP pool sized to all cores; 2 workers x 2 threads on 2 cores spin
    against each other and the heavy tests take 3-6x longer. Set before torch is imported here, so the workers'
    pools and the subprocesses they start (training CLIs, DDP ranks, loader workers) inherit it. An
    OMP_NUM_THREADS set by the user wins; without xdist (`-n 0`) nothing changes.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


_share_the_cores_between_xdist_workers()

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from eve_lightning.data import synthetic_shapes  # noqa: E402
from tests.helpers.repo_paths import CONF  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_model_cfg() -> dict:
    """conf/model/tiny.yaml as a plain dict (the same file training runs use)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """conf/model/tiny.yaml with random weights and no aligner, saved as a stage export named `tiny-eve`."""
    from eve_lightning.data.tokenizer import default_tokenizer_path
    from eve_lightning.models.export_format import save_export

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["align_weight"] = 0.0
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    folder = tmp_path_factory.mktemp("model") / "tiny-eve"
    return save_export(folder, model.vlm, tokenizer_files=[default_tokenizer_path()])


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    """paths.data_dir holding a small demo set (48 samples per task, 16 held out)."""
    root = tmp_path_factory.mktemp("data")
    synthetic_shapes.generate(root / "demo", num_pretrain=48, num_sft=48, num_val=16, seed=0, max_side=672, workers=1)
    return root


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set: 60 caption and 60 SFT training samples, 20 held-out each, shards of 10 samples."""
    out = tmp_path_factory.mktemp("demo")
    synthetic_shapes.generate(out, num_pretrain=60, num_sft=60, num_val=20, seed=3, shard_size=10, workers=2)
    return out


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Held-out demo data only: 4 conversation records and 4 caption images."""
    root = tmp_path_factory.mktemp("eval-demo") / "demo"
    synthetic_shapes.generate(root, num_pretrain=0, num_sft=0, num_val=4, seed=0, max_side=672, workers=1)
    return root
