"""`debug=profile`: a trace and an operator table of the chosen training batches of a real run."""

from __future__ import annotations

import json

import pytest

from eve_lightning.callbacks.step_profiler import StepProfiler
from eve_lightning.train import train
from tests.helpers.runs import compose_train


@pytest.mark.slow
def test_debug_profile_writes_a_trace_and_the_top_operators(tmp_path, demo_data_dir):
    cfg = compose_train(
        ["+stage=pretrain", "debug=profile", "callbacks.step_profiler.start_step=1", "callbacks.step_profiler.steps=2"],
        tmp_path,
        demo_data_dir,
    )
    train(cfg)
    out = tmp_path / "run" / "profile"
    trace = json.loads((out / "trace_rank0.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::mm" in n or "aten::addmm" in n for n in names)  # the model's matrix products are in it
    table = (out / "top_ops_rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="steps >= 1"):
        StepProfiler("x", start_step=0, steps=0)


class FakeTrainer:
    accumulate_grad_batches = 2
    global_rank = 0


def test_the_window_holds_whole_optimizer_steps_and_a_failure_keeps_the_trace(tmp_path):
    prof = StepProfiler(str(tmp_path / "a"), start_step=1, steps=2)
    trainer, inside = FakeTrainer(), []
    prof.on_fit_start(trainer, None)
    for idx in range(10):  # 5 optimizer steps of 2 micro-batches
        prof.on_train_batch_start(trainer, None, None, idx)
        inside.append(prof.profiler is not None)
        prof.on_train_batch_end(trainer, None, None, None, idx)
    assert inside == [False, False, True, True, True, True, False, False, False, False]
    assert (tmp_path / "a" / "trace_rank0.json").is_file()

    failing = StepProfiler(str(tmp_path / "b"), start_step=0, steps=5)
    failing.on_fit_start(trainer, None)
    failing.on_train_batch_start(trainer, None, None, 0)
    failing.on_exception(trainer, None, RuntimeError("out of memory"))
    assert failing.profiler is None and (tmp_path / "b" / "top_ops_rank0.txt").is_file()
