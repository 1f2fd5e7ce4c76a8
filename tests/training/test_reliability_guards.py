"""Guards and crash safety: non-finite steps skipped on every rank, crash-safe checkpoints, safe loading,
instantiation allowlist, no secrets in run outputs."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eve_lightning.inference.loading import load_model
from eve_lightning.lit.checkpoint_io import AtomicCheckpointIO
from eve_lightning.lit.trainer import build_loggers
from eve_lightning.train import build, train
from eve_lightning.utils.config_checks import ConfigError
from tests.helpers.repo_paths import REPO
from tests.helpers.runs import FAST, compose_train

pytestmark = pytest.mark.reliability
NAN = [
    "security.extra_targets=[tests.helpers.nan_inject.NanAt]",
    "+callbacks.nan._target_=tests.helpers.nan_inject.NanAt",
]


def test_a_nan_step_is_skipped_and_logged_and_training_goes_on(tmp_path, demo_data_dir, caplog):
    cfg = compose_train(
        ["+stage=pretrain", "trainer.max_steps=5", "global_batch_size=2", *NAN, "+callbacks.nan.steps=[2]"],
        tmp_path,
        demo_data_dir,
    )
    run = build(cfg)
    with caplog.at_level(logging.WARNING):
        run.trainer.fit(run.module, datamodule=run.data_module)
    assert run.module.skipped_steps == 1
    assert any(re.search(r"step 2 skipped: non-finite loss nan \(samples: .*shard-", r.message) for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in run.module.model.parameters())
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


def test_three_nan_steps_in_a_row_stop_the_run_with_the_message(tmp_path, demo_data_dir):
    cfg = compose_train(
        ["+stage=pretrain", "trainer.max_steps=8", "global_batch_size=2", *NAN, "+callbacks.nan.steps=[1,2,3]"],
        tmp_path,
        demo_data_dir,
    )
    with pytest.raises(RuntimeError, match=r"stopping: 3 consecutive steps had a non-finite loss .*guards"):
        train(cfg)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoints_holding_pickled_objects_are_refused_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": Evil()}, f)
    refused = "was not loaded|not a torch checkpoint"  # a plain pickle is no torch file: refused unread either way
    with pytest.raises(ValueError, match=refused):
        load_model(evil)
    with pytest.raises(ValueError, match=refused):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_every_unpickling_in_the_source_goes_through_safe_load():
    """One reader of pickles (checkpoints/safe_load.py, weights-only); no other unpickler or pickle converter."""
    calls, others = [], []
    loaders = r"pickle\.loads?\(|Unpickler\(|_lazy_load\(|convert_zero_checkpoint|zero_to_fp32|allow_pickle=True"
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((path.name, text[m.start() : i]))
        others += [(path.name, m.group()) for m in re.finditer(loaders, text)]
    assert {name for name, _ in calls} == {"safe_load.py"}
    assert all("weights_only=True" in call for _, call in calls)
    assert others == []


def test_targets_outside_the_allowlist_are_refused(tmp_path, demo_data_dir):
    cfg = compose_train(
        ["+stage=sft", "+callbacks.evil._target_=os.system", "+callbacks.evil.command=touch pwned"],
        tmp_path,
        demo_data_dir,
    )
    with pytest.raises(ConfigError, match=r"callbacks.evil._target_=os.system is not in the instantiation allowlist"):
        build(cfg)


@pytest.mark.parametrize(
    "override",
    [
        "+callbacks.evil='${oc.create:{_target_:os.system,command:touch pwned}}'",
        "module.model_factory='${eve_partial:${oc.create:{_target_:os.system,command:touch pwned}}}'",
    ],
)
def test_targets_made_by_a_resolver_are_refused_too(tmp_path, demo_data_dir, override):
    cfg = compose_train(["+stage=sft", override], tmp_path, demo_data_dir)
    with pytest.raises(ConfigError, match=r"_target_=os.system is not in the instantiation allowlist"):
        build(cfg)
    assert not (tmp_path / "pwned").exists()


def test_a_missing_wandb_package_fails_before_training_and_names_the_csv_logger(tmp_path, demo_data_dir, monkeypatch):
    cfg = compose_train(["+stage=prealign", "logger=wandb"], tmp_path, demo_data_dir)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(RuntimeError, match=r"logger=wandb needs the wandb package.*pip install wandb.*logger=csv"):
        build_loggers(cfg)
    cfg_csv = compose_train(["+stage=prealign", "logger=csv"], tmp_path, demo_data_dir)
    assert [type(x).__name__ for x in build_loggers(cfg_csv)] == ["CSVLogger"]


@pytest.mark.slow
def test_no_secret_reaches_configs_checkpoints_or_logs(tmp_path, demo_data_dir):
    secret = "sk-eve-test-0123456789abcdef"
    env = {**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "HF_TOKEN": secret + "hf"}
    args = ["+stage=prealign", *FAST, "logger=wandb", f"paths.data_dir={demo_data_dir}", "trainer.max_steps=2"]
    proc = subprocess.run(
        [sys.executable, "-m", "eve_lightning.train", *args], cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert secret.encode() not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "config.yaml" for p in files)
    assert any("wandb" in p.parts for p in files)
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []
    # the resolved config is the W&B run config (sweeps compare on it), and the exit prints no summary tables
    # (an offline run keeps its config in the run's record file: key `optim`, the value as JSON)
    record = next(p for p in files if p.suffix == ".wandb").read_bytes()
    assert re.search(rb'optim[^{]{0,8}\{"lr":0\.002,', record) and re.search(
        rb'stage[^{]{0,8}\{"name":"prealign"', record
    )
    assert b"Run history" not in proc.stdout + proc.stderr and b"Run summary" not in proc.stdout + proc.stderr


def test_slurm_jobs_requeue_on_the_preset_signal_into_their_own_run_dir(tmp_path, demo_data_dir, monkeypatch):
    import signal

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from eve_lightning.utils import run_names

    for var, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "eve",
        "SLURM_PROCID": "0",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    run_names.run_id.cache_clear()
    assert run_names.run_id() == "slurm-4242"  # the same name after a requeue: the run resumes from its dir
    run_names.run_id.cache_clear()
    cfg = compose_train(["+stage=pretrain", "+slurm={requeue_signal: SIGUSR2}"], tmp_path, demo_data_dir)
    run = build(cfg)
    env = run.trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert env.auto_requeue and env.requeue_signal == signal.SIGUSR2
