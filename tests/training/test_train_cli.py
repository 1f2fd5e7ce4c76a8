"""The command line as users type it: one-line errors, 2-process CPU DDP, a two-point multirun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.runs import FAST, child_pythonpath, run_cli

pytestmark = pytest.mark.slow  # each test runs the training CLI in a fresh process


def error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_run_without_stage_stops_at_once_listing_the_stages(tmp_path):
    proc = run_cli([], tmp_path)
    assert proc.returncode == 2
    assert error_line(proc) == (
        "eve_lightning.train: error: no stage given: add "
        "+stage=<evev2_s0|evev2_s1_0|evev2_s1_1|evev2_s2|evev2_sft|prealign|pretrain|sft|sft_hd> (e.g. +stage=prealign)"
    )
    assert not (tmp_path / "data").exists()  # nothing was built or generated


def test_unknown_stage_names_the_choices(tmp_path):
    proc = run_cli(["+stage=finetune"], tmp_path)
    assert proc.returncode != 0
    assert "finetune" in proc.stderr and "prealign" in proc.stderr and "sft_hd" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=eve_7b"], "model.llm.path={root}/models/vicuna-7b-v1.5 does not exist: put the LLM checkpoint"),
        (
            ["global_batch_size=10", "data.batch_size=4"],
            "global_batch_size=10 is not a multiple of data.batch_size (4)",
        ),
        (["+stage=sft_hd"], "stage sft_hd trains at r1344 but resolution=r672: add resolution=r1344"),
        (["init_from=nowhere"], "init_from=nowhere is not a stage export (no config.json)"),
        (["gradient_checkpointing_layers=2"], "gradient_checkpointing_layers=2 needs gradient_checkpointing=true"),
        (
            [
                "strategy=fsdp",
                "trainer.strategy.checkpoint_layers=true",
                "gradient_checkpointing=true",
                "gradient_checkpointing_layers=2",
            ],
            "while the FSDP strategy checkpoints every block",
        ),
        (["strategy=deepspeed_zero3", "compile.enabled=true"], "not supported under DeepSpeed ZeRO-3"),
        (
            ["strategy=fsdp", "trainer.strategy.checkpoint_layers=true", "compile.enabled=true"],
            "with compile.enabled=true use gradient_checkpointing=true instead",
        ),
        (
            ["resolution=672"],
            "resolution=672 is not an option of resolution: choose one of evev2_r1600, evev2_r1600_sft, evev2_r800, "
            "r1344, r672",
        ),
        (["-m", "model=tiny,tiny_7b"], "model=tiny_7b is not an option of model: choose one of demo_125m, eve_1b"),
        (["data.train_shards={root}/nowhere"], "data: {root}/nowhere does not exist: build shards there with"),
        (["data.train_shards="], "data: the data source is empty: set data.train_shards"),
        (["-m", "publish=true", "optim.lr=1e-3,2e-3"], "publish=true in a multirun would have every point replace"),
        (["data.num_workers=2"], "data.num_workers is now data.loader.num_workers: write data.loader.num_workers=2"),
        (["+data.loader.num_worker=2"], "data.loader has no option num_worker: its options are num_workers, "),
    ],
)
def test_impossible_configs_fail_in_one_line_naming_the_fix(tmp_path, args, message):
    stage = [] if any(a.startswith("+stage") for a in args) else ["+stage=pretrain"]
    flags = [a for a in args if a.startswith("-")]  # -m goes first, as users type it
    rest = [a.format(root=tmp_path) for a in args if not a.startswith("-")]
    proc = run_cli([*flags, *stage, *rest], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("eve_lightning.train: error: "), proc.stderr[-2000:]
    assert message.format(root=tmp_path) in lines[0]
    assert not (tmp_path / "data").exists()  # refused before the demo data was generated
    left = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()] if (tmp_path / "logs").exists() else []
    assert left == []  # the refused run left no run dir behind


def test_a_config_mistake_is_refused_before_lightning_is_imported(tmp_path):
    # the entry point run in-process (as `python -m` runs it), then asked which heavy modules it loaded
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['eve_lightning.train', '+stage=pretrain', 'gradient_checkpointing_layers=2']\n"
        "try:\n"
        "    runpy.run_module('eve_lightning.train', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'lightning' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": child_pythonpath(dict(os.environ))}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "exit 2 False False", proc.stdout + proc.stderr[-2000:]
    assert "gradient_checkpointing_layers=2 needs gradient_checkpointing=true" in proc.stderr


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_two_process_cpu_ddp_takes_equal_steps_in_one_run_dir(tmp_path, demo_data_dir):
    args = [
        "+stage=pretrain",
        *FAST,
        f"paths.data_dir={demo_data_dir}",
        "trainer.devices=2",
        "strategy=ddp",
        "global_batch_size=8",  # 2 per device x 2 devices x 2 accumulation
        "trainer.max_steps=3",
    ]
    proc = run_cli(args, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 devices x 2 accumulation" in proc.stderr + proc.stdout
    runs = list((tmp_path / "logs" / "train" / "demo" / "pretrain").iterdir())
    assert len(runs) == 1  # the second rank did not create a Hydra run dir of its own
    rows = read_csv(runs[0] / "csv" / "metrics.csv")
    assert max(int(r["step"]) for r in rows if r.get("train/loss")) == 2  # steps 0..2 logged on rank 0
    assert (runs[0] / "export" / "model.safetensors").is_file()


def test_two_point_multirun_gives_separate_runs(tmp_path, demo_data_dir):
    fast = [a for a in FAST if "publish_to" not in a]  # the demo experiment's publish targets stay configured
    args = ["-m", "+stage=sft", *fast, f"paths.data_dir={demo_data_dir}", "optim.lr=1e-3,2e-3", "trainer.max_steps=2"]
    proc = run_cli(args, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "train" / "demo" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        rows = read_csv(job / "csv" / "metrics.csv")
        lrs.append(max(float(r["lr/base"]) for r in rows if r.get("lr/base")))
        assert (job / "export" / "model.safetensors").is_file()
    assert lrs[1] == pytest.approx(2 * lrs[0])
    assert not (tmp_path / "runs").exists()  # no sweep point replaced the published demo model
    logged = [yaml.safe_load((job / "csv" / "hparams.yaml").read_text()) for job in jobs]
    assert [h["optim"]["lr"] for h in logged] == [1e-3, 2e-3]  # the run config carries the swept value
    assert [h["run_name"] for h in logged] == ["demo-sft-local-0-optim.lr=0.001", "demo-sft-local-1-optim.lr=0.002"]
