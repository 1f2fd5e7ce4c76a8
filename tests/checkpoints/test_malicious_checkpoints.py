"""No loader and no command runs code from a checkpoint: crafted pickles are refused before anything of them runs.

Each crafted file is a real torch checkpoint (zip layout) whose pickle calls `os.system("touch <marker>")` on
load. It is handed to every way a user can give us weights: `load_model`, `export`, `chat`, the web demo, `eval`,
and training's `ckpt_path` (a file, a DeepSpeed folder, `last`) and `init_from`. The marker file must never appear,
and each refusal is one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import uvicorn
from hydra import compose, initialize_config_dir

from eve_lightning import chat, export
from eve_lightning.checkpoints.safe_load import UnsafeCheckpointError
from eve_lightning.eval.cli import evaluate
from eve_lightning.inference.loading import check_model, load_model
from eve_lightning.train import build
from eve_lightning.utils.config_checks import ConfigError
from eve_lightning.webui.__main__ import main as demo_main
from tests.helpers.ports import free_port
from tests.helpers.repo_paths import CONF
from tests.helpers.runs import compose_train

pytestmark = pytest.mark.reliability


class Payload:
    """Pickles as a call of os.system: unpickling it with plain pickle touches the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_evil(path: Path, marker: Path, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Payload(marker), **extra}, path)
    return path


@pytest.fixture
def evil(tmp_path):
    """Crafted checkpoints of every layout, and the marker their payload would create."""
    marker = tmp_path / "PWNED"
    root = tmp_path / "evil"
    ckpt = write_evil(root / "model.ckpt", marker)
    deepspeed = root / "deepspeed.ckpt"
    write_evil(deepspeed / "checkpoint" / "mp_rank_00_model_states.pt", marker)
    write_evil(deepspeed / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    (deepspeed / "latest").write_text("checkpoint")
    official = root / "official"
    write_evil(official / "pytorch_model.bin", marker)
    (official / "config.json").write_text(json.dumps({"model_type": "llama", "mm_vision_tower": "eve-672"}))
    run_dir = root / "run"
    write_evil(run_dir / "checkpoints" / "last.ckpt", marker)
    return {"marker": marker, "ckpt": ckpt, "deepspeed": deepspeed, "official": official, "run": run_dir}


KINDS = ["ckpt", "deepspeed", "official", "run"]


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_the_payload_really_runs_under_plain_pickle(evil):
    """The crafted files are live: plain unpickling touches the marker (so its absence below means something)."""
    torch.load(evil["ckpt"], weights_only=False)
    assert evil["marker"].exists()


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_and_check_model_refuse_without_running_it(evil, kind):
    for loader in (load_model, check_model):
        with pytest.raises(UnsafeCheckpointError, match=r"was not loaded: it holds pickled objects .*system"):
            loader(evil[kind])
    assert not evil["marker"].exists()


@pytest.mark.parametrize("kind", KINDS)
def test_export_chat_and_demo_refuse_in_one_line(evil, kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert export.main([str(evil[kind]), str(tmp_path / "out")]) == 2
    assert "was not loaded" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert chat.main(["--model", str(evil[kind]), "--prompt", "hi", "--device", "cpu"]) == 2
    assert "was not loaded" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("the demo served an unsafe model"))
    with pytest.raises(SystemExit) as exc:
        demo_main(["--model", str(evil[kind]), "--device", "cpu", "--port", str(free_port())])
    assert exc.value.code == 2 and "was not loaded" in one_line(capsys.readouterr().err)
    assert not evil["marker"].exists()


@pytest.mark.parametrize("kind", KINDS)
def test_eval_refuses_before_reading_the_benchmark(evil, kind, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        paths = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/out"]
        cfg = compose("eval", overrides=[f"model_path={evil[kind]}", "benchmark=demo", *paths])
    with pytest.raises(ConfigError, match="was not loaded"):
        evaluate(cfg)
    assert not evil["marker"].exists()


@pytest.mark.parametrize("option", ["ckpt_path=ckpt", "ckpt_path=deepspeed", "init_from=ckpt", "init_from=deepspeed"])
def test_training_refuses_at_start_up(evil, option, tmp_path, demo_data_dir):
    key, kind = option.split("=")
    cfg = compose_train(["+stage=sft", f"{key}={evil[kind]}"], tmp_path, demo_data_dir)
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert "\n" not in str(err.value) and str(evil[kind]) in str(err.value)
    assert not evil["marker"].exists()


def test_training_ckpt_path_last_refuses_an_unsafe_last_checkpoint(evil, tmp_path, demo_data_dir):
    cfg = compose_train(["+stage=sft", "ckpt_path=last"], tmp_path, demo_data_dir)
    stage_dir = Path(cfg.paths.log_dir) / cfg.task_name / cfg.experiment_name / "sft"
    write_evil(stage_dir / "2026-01-01_00-00-00_local" / "checkpoints" / "last.ckpt", evil["marker"])
    with pytest.raises(ConfigError, match=r"ckpt_path=last: .*last.ckpt was not loaded"):
        build(cfg)
    assert not evil["marker"].exists()
