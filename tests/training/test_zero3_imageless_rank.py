"""DeepSpeed ZeRO-3 steps where one rank's micro-batch holds an image and the other's none (text-only SFT samples).

ZeRO-3 gathers a module's partitioned parameters with a collective of all ranks when the module is called, so every rank
must call the same modules in the same order. Two real CPU ranks (gloo, one process each, as
tests/helpers/zero_folders.py runs them) take two forward, backward and SGD steps of a tiny model of each family through
tests/helpers/zero3_imageless.py, the image on rank 0 in the first step and on rank 1 in the second. With
``uniform_module_calls`` every step completes on both ranks; the first gives the plain model's losses and, after its
update, the weights of one SGD step with the plain model's gradient averaged over the two batches. Without it the image
rank's gathers in the vision modules meet other collectives on the text rank: gloo reports that mismatch as an error
(the sizes differ), NCCL on GPUs would wait until its timeout (the hang the option prevents). Either way the step does
not complete, which is what the second test checks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import zero3_imageless
from tests.helpers.ports import free_port
from tests.helpers.repo_paths import REPO

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # DeepSpeed in two fresh processes

SCRIPT = REPO / "tests" / "helpers" / "zero3_imageless.py"


def run_ranks(families: str, option: str, folder: Path, timeout: float) -> list[tuple[int | None, str]]:
    """Start both ranks and wait at most ``timeout`` s in all: (exit code, or None if killed at the timeout; output).

    Rank 0 saves the weights after each family's first step in ``folder``.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    logs = [folder / f"{option}-rank{rank}.log" for rank in range(2)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            cmd = [sys.executable, str(SCRIPT), families, str(rank), "2", port, option, str(folder)]
            procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


def rank_reports(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"family"')]


def test_zero3_steps_with_an_imageless_rank_complete_with_uniform_module_calls(tmp_path):
    # EVEv2, EVE v1 with its aligner, then EVEv2 with one rank's supervised tokens in two LM-head chunks
    families = ("evev2", "eve", "evev2_lm")
    results = run_ranks(",".join(families), "on", tmp_path, timeout=150)
    for code, output in results:
        assert code == 0, output[-3000:]
    for rank, (_, output) in enumerate(results):
        reports = rank_reports(output)
        assert [(r["family"], r["step"]) for r in reports] == [(f, s) for f in families for s in (0, 1)]
        for report in reports:
            family, step = report["family"], report["step"]
            images = int(rank == step and family != "evev2_lm")
            assert report["rank"] == rank and report["n_images"] == images  # one image rank per step
            assert math.isfinite(report["loss"])
            if step == 0:  # the loss of the plain model (one process, no DeepSpeed) on this rank's batch
                vlm = zero3_imageless.tiny_vlm(family, False)
                want = vlm(**zero3_imageless.batch(family, rank)).loss.item()
                assert report["loss"] == pytest.approx(want, rel=1e-5), (family, rank)
    for family in families:  # the first SGD step applied the gradient of the plain model, averaged over ranks
        vlm = zero3_imageless.tiny_vlm(family, False)
        losses = [vlm(**zero3_imageless.batch(family, rank)).loss for rank in range(2)]
        (sum(losses) / 2).backward()
        got = torch.load(tmp_path / f"{family}-step0.pt")
        assert got.keys() == dict(vlm.named_parameters()).keys()
        for name, param in vlm.named_parameters():
            want = param.detach() - zero3_imageless.LR * param.grad
            torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6, msg=f"{family} {name}")


@pytest.mark.parametrize("family", ["evev2", "evev2_lm"])
def test_without_uniform_module_calls_the_same_step_does_not_complete(tmp_path, family):
    results = run_ranks(family, "off", tmp_path, timeout=60)
    assert any(code != 0 for code, _ in results), [output[-2000:] for _, output in results]
