"""Stage exports under DeepSpeed ZeRO-3 hold the whole weights, not the empty partitions of ``state_dict()``.

DeepSpeed runs on the CPU here (one gloo process, in a subprocess so its process group stays out of the suite).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.ports import free_port
from tests.helpers.repo_paths import REPO

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # DeepSpeed in a fresh process

SCRIPT = """
import importlib, os, torch, deepspeed
from eve_lightning.callbacks.stage_export import zero3_state_dict
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
want = {k: v.clone() for k, v in model.state_dict().items()}
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # a CPU speed-up op: nothing to build
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # a torch optimizer: no DeepSpeed op to build
deepspeed.initialize(model=model, optimizer=optimizer, config=config)
assert all(v.numel() == 0 for v in model.state_dict().values()), "expected partitioned parameters"
got = zero3_state_dict(model)
assert got.keys() == want.keys(), (got.keys(), want.keys())
for k in want:
    assert torch.equal(got[k], want[k]), k
assert zero3_state_dict(model, keep=False) is None
print("ok")
"""


def test_zero3_state_dict_gathers_every_partitioned_parameter(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
