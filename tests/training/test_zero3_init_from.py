"""Under DeepSpeed ZeRO-3 the model is built partitioned; `init_from` and the copy step must still write into it.

Lightning builds the model inside ``deepspeed.zero.Init`` under ZeRO-3, so every parameter is an empty placeholder
by the time ``EveLitModule`` loads ``init_from``: ``load_state_dict`` refuses the whole tensors (size mismatch with
the empty placeholders) and the copy step's ``copy_`` between placeholders changes nothing. One real CPU rank
(tests/helpers/zero3_init_from.py) loads an export and runs the copy step through ``lit.zero3.writable_weights``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.models.evev2.decoder import copy_text_to_vision, vision_text_pairs
from eve_lightning.models.export_format import save_export
from tests.helpers.official_checkpoint_v2 import tiny_evev2
from tests.helpers.ports import free_port
from tests.helpers.repo_paths import REPO

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # DeepSpeed in fresh processes


def loaded(export, mode: str, tmp_path) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{mode}.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "zero3_init_from.py"), str(export), str(free_port()), mode,
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return torch.load(out)


def test_init_from_and_the_copy_step_write_into_partitioned_weights(tmp_path):
    source = tiny_evev2(seed=1)  # other weights than the seed-0 model the rank builds
    export = save_export(tmp_path / "export", source, tokenizer_files=[default_tokenizer_path()], stage="evev2_s0")
    copy_text_to_vision(source)  # what the rank's model must hold afterwards: the export, experts copied
    want = dict(source.named_parameters())
    got = loaded(export, "with", tmp_path)
    assert got.keys() == want.keys()
    for name, value in got.items():
        torch.testing.assert_close(value, want[name].detach(), rtol=0, atol=0, msg=name)
    assert all(torch.equal(got[v], got[t]) for v, t in vision_text_pairs_names(source))


def vision_text_pairs_names(vlm) -> list[tuple[str, str]]:
    """(vision copy, its text weight) parameter names."""
    ids = {id(p): n for n, p in vlm.named_parameters()}
    return [(ids[id(v)], ids[id(t)]) for _, v, t in vision_text_pairs(vlm)]
