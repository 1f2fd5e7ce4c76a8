"""The export and chat command lines, as users run them."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from views import photo

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.inference.loading import load_model
from eve_lightning.models.export_format import save_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from omegaconf import OmegaConf

    from repo_paths import CONF

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg = copy.deepcopy(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    out = tmp_path_factory.mktemp("m") / "export"
    save_export(out, model.vlm, tokenizer_files=[default_tokenizer_path()])
    return out


def run(module, args, cwd, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=300
    )


def test_export_cli_rewrites_weights_that_load_back(export_dir, tmp_path):
    proc = run("eve_lightning.export", [str(export_dir), str(tmp_path / "out"), "--dtype", "float32"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported export" in proc.stdout
    a, b = load_model(export_dir, device="cpu"), load_model(tmp_path / "out", device="cpu")
    assert b.vlm.aligner is None  # inference export: no aligner
    sa, sb = a.vlm.state_dict(), b.vlm.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    bad = run("eve_lightning.export", [str(tmp_path / "missing"), str(tmp_path / "o2")], tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_chat_cli_answers_once_with_bench(export_dir, tmp_path):
    img = tmp_path / "photo.png"
    photo("coffee", (600, 400)).save(img)
    args = ["--model", str(export_dir), "--image", str(img), "--prompt", "What is this?", "--max-new-tokens", "4"]
    proc = run("eve_lightning.chat", [*args, "--bench"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[bench] prompt" in proc.stdout and "tokens/s" in proc.stdout
    assert "672 px" in proc.stderr


def test_chat_cli_interactive_session(export_dir, tmp_path):
    proc = run(
        "eve_lightning.chat",
        ["--model", str(export_dir), "--max-new-tokens", "3"],
        tmp_path,
        stdin="Hello there\n/clear\nAnd again\n/quit\n",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("ASSISTANT: ") == 2


def test_chat_cli_without_a_trained_demo_model_says_what_to_do(tmp_path):
    proc = run("eve_lightning.chat", ["--prompt", "hi"], tmp_path)
    assert proc.returncode == 2
    assert "runs/demo/latest does not exist: run `make train` first, or pass --model" in proc.stderr
