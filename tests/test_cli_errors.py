"""A newcomer's mistakes at the command line: exit status 2, one line on stderr naming the fix, no work started.

Every command runs as a user runs it (``python -m ...`` in a fresh process). Each case must be refused at start-up,
before any model loads or any output is written, so each takes seconds; where a later check would also fail (an
empty folder given as the model), the expected message proves that the argument check came first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Case:
    """One mistake: the command, its arguments (built in a fresh folder) and a phrase the error line must hold."""

    module: str
    args: Callable[[Path, ExitStack], list[str]]
    phrase: str


def listening_port(stack: ExitStack) -> int:
    """A port on 127.0.0.1 that another program (this test) is listening on, for the duration of the case."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock.getsockname()[1]


def folder(path: Path, *files: str) -> Path:
    """Make `path` (a folder) holding the named small files; return it."""
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).write_text("x")
    return path


def shard_inputs(tmp: Path) -> tuple[str, str]:
    """An annotation file and an image folder make_shards could use."""
    ann = tmp / "ann.json"
    ann.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "hi"}]}]))
    return str(ann), str(folder(tmp / "images"))


def make_shards(images: str | None = None, out: str | None = None):
    def build(tmp: Path, _: ExitStack) -> list[str]:
        ann, imgs = shard_inputs(tmp)
        return ["--format", "llava", "--annotations", ann, "--images", images or imgs, "--out", out or str(tmp / "o")]

    return build


def without(flag: str, build):
    """The arguments of `build` without `flag` and its value."""

    def drop(tmp: Path, stack: ExitStack) -> list[str]:
        args = build(tmp, stack)
        i = args.index(flag)
        return args[:i] + args[i + 2 :]

    return drop


def with_args(build, *extra: str):
    return lambda tmp, stack: [*build(tmp, stack), *extra]


def chat(*args: str):
    """chat with an empty folder as the model: loading it would fail with another message."""
    return lambda tmp, _: ["--model", str(folder(tmp / "model")), *args]


def demo(*args: str):
    return lambda tmp, _: ["--model", str(folder(tmp / "model")), *args]


def export(out: Callable[[Path], str], *extra: str):
    return lambda tmp, _: [str(folder(tmp / "ckpt")), out(tmp), *extra]


SHARDS = "eve_lightning.data.make_shards"
CASES = {
    # make_shards
    "shards-no-annotations": Case(SHARDS, without("--annotations", make_shards()), "required: --annotations"),
    "shards-out-not-empty": Case(
        SHARDS, lambda tmp, s: make_shards(out=str(folder(tmp / "full", "mine.txt")))(tmp, s), "pass --overwrite"
    ),
    "shards-images-missing": Case(
        SHARDS, lambda tmp, s: make_shards(images=str(tmp / "no-such-folder"))(tmp, s), "is not a folder"
    ),
    "shards-workers-0": Case(SHARDS, with_args(make_shards(), "--workers", "0"), "--workers must be a positive"),
    # export
    "export-cwd-with-foreign-file": Case(
        "eve_lightning.export", export(lambda tmp: "."), "holds files this command did not write"
    ),
    "export-folder-with-foreign-file": Case(
        "eve_lightning.export",
        export(lambda tmp: str(folder(tmp / "out", "notes.txt"))),
        "or pass --overwrite to replace the export's files in it (other files are kept)",
    ),
    "export-out-is-a-file": Case("eve_lightning.export", export(lambda tmp: str(tmp / "foreign.txt")), "is a file"),
    "export-missing-ckpt": Case(
        "eve_lightning.export", lambda tmp, _: [str(tmp / "no.ckpt"), str(tmp / "out")], "does not exist"
    ),
    "export-no-out": Case("eve_lightning.export", lambda tmp, _: [str(folder(tmp / "ckpt"))], "required: out"),
    "export-shard-gb-0": Case("eve_lightning.export", export(lambda tmp: str(tmp / "o"), "--shard-gb", "0"), "above 0"),
    # the web demo
    "demo-port-out-of-range": Case("eve_lightning.demo", demo("--port", "99999"), "use one from 1 to 65535"),
    "demo-port-in-use": Case(
        "eve_lightning.demo",
        lambda tmp, stack: demo("--port", str(listening_port(stack)))(tmp, stack),
        "is already in use by another program: stop it, or pass a free --port",
    ),
    "demo-port-not-a-number": Case("eve_lightning.demo", demo("--port", "http"), "invalid int value"),
    "demo-host-not-here": Case("eve_lightning.demo", demo("--host", "203.0.113.7"), "give an address of this machine"),
    "demo-model-missing": Case("eve_lightning.demo", lambda tmp, _: ["--model", str(tmp / "none")], "does not exist"),
    # chat
    "chat-top-p-0": Case("eve_lightning.chat", chat("--top-p", "0", "--temperature", "1"), "--top-p must be in (0, 1]"),
    "chat-top-p-above-1": Case("eve_lightning.chat", chat("--top-p", "1.5"), "--top-p must be in (0, 1]"),
    "chat-negative-temperature": Case("eve_lightning.chat", chat("--temperature", "-1"), "--temperature must be >= 0"),
    "chat-nan-temperature": Case("eve_lightning.chat", chat("--temperature", "nan"), "--temperature must be >= 0"),
    "chat-no-new-tokens": Case("eve_lightning.chat", chat("--max-new-tokens", "0"), "--max-new-tokens must be"),
    "chat-top-p-not-a-number": Case("eve_lightning.chat", chat("--top-p", "high"), "invalid float value: 'high'"),
}


# The chat CLI checks its settings with GenerationConfig, whose module imports torch: seconds per case, so `slow`.
SLOW_MODULES = {"eve_lightning.chat"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if CASES[n].module in SLOW_MODULES else n for n in CASES]
)
def test_mistake_is_one_line_and_exit_2(name, tmp_path):
    case = CASES[name]
    work = folder(tmp_path / "work", "foreign.txt")  # the user's current folder, with a file of theirs
    with ExitStack() as stack:
        args = case.args(work, stack)
        before = sorted(p.relative_to(work) for p in work.rglob("*"))
        proc = subprocess.run(
            [sys.executable, "-m", case.module, *args], cwd=work, capture_output=True, text=True, timeout=120
        )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].strip(), proc.stderr  # no usage block, no traceback, no warning
    assert lines[0].startswith(f"{case.module}: error: "), lines[0]
    assert case.phrase in lines[0], lines[0]
    assert proc.stdout == "", proc.stdout  # nothing started: no "loading ...", no address printed
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before  # nothing written
