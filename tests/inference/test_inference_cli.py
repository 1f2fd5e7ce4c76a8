"""The export and chat command lines, as users run them."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.inference.loading import load_model
from eve_lightning.models.export_format import save_export
from tests.helpers.views import photo

pytestmark = pytest.mark.slow  # each test runs the chat or export CLI in a fresh process


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from omegaconf import OmegaConf

    from tests.helpers.repo_paths import CONF

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


def same_weights(a, b) -> bool:
    sa, sb = load_model(a, device="cpu").vlm.state_dict(), load_model(b, device="cpu").vlm.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_into_the_current_folder_keeps_the_users_files(export_dir, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    # `export CKPT .` into an empty current folder, in shards of 5 MiB (the 8 MiB embeddings get their own)
    proc = run("eve_lightning.export", [str(export_dir), ".", "--dtype", "float32", "--shard-gb", "0.005"], here)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(p.name for p in here.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (here / "model.safetensors.index.json").is_file()
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*.old"))  # no temporary left beside it

    # a file of the user's arrives: a new export there is refused without --overwrite, and nothing is touched
    (here / "notes.txt").write_text("my notes")
    before = {p.name: p.stat().st_mtime_ns for p in here.iterdir()}
    proc = run("eve_lightning.export", [str(export_dir), ".", "--dtype", "float32"], here)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "is not empty (it holds an earlier export)" in line and "--overwrite" in line, line
    assert {p.name: p.stat().st_mtime_ns for p in here.iterdir()} == before

    # --overwrite: the one-file export replaces the sharded one (old shards and index gone); the notes stay
    proc = run("eve_lightning.export", [str(export_dir), ".", "--dtype", "float32", "--overwrite"], here)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (here / "notes.txt").read_text() == "my notes"
    assert (here / "model.safetensors").is_file() and not (here / "model.safetensors.index.json").exists()
    assert not [s for s in shards if (here / s).exists()]
    assert same_weights(export_dir, here)


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
