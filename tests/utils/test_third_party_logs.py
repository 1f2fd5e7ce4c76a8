"""Importing eve_lightning drops torchao's optional-kernel warnings and torch's pytree enum note, nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from eve_lightning.utils import third_party_logs


def _record(name: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)


def test_the_filters_drop_only_their_lines_and_install_once():
    torchao = logging.getLogger("torchao")
    third_party_logs.install()
    third_party_logs.install()
    ours = [f for f in torchao.filters if isinstance(f, third_party_logs.DropRecords)]
    assert len(ours) == 1
    so = "Failed to load /venv/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load"
    assert not torchao.filter(_record("torchao", so))
    assert torchao.filter(_record("torchao", "Skipping import of cpp extensions due to incompatible torch version"))
    pytree = logging.getLogger("torch.utils._pytree")
    enum_note = (
        "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an opaque "
        "value type. Calling register_constant() on Enum subclasses is deprecated"
    )
    assert not pytree.filter(_record("torch.utils._pytree", enum_note))
    assert pytree.filter(_record("torch.utils._pytree", "some other pytree warning"))


def test_a_command_that_imports_transformers_with_torchao_installed_prints_no_kernel_warnings():
    pytest.importorskip("torchao")
    code = "import transformers.quantizers.auto"  # imports torchao when it is installed
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if "Failed to load" not in bare.stderr:
        pytest.skip("torchao's optional kernels load with this torch: nothing to drop")
    ours = subprocess.run(
        [sys.executable, "-c", "import eve_lightning; " + code], capture_output=True, text=True, timeout=120
    )
    assert ours.returncode == 0, ours.stderr
    assert "Failed to load" not in ours.stderr and "Enum subclass" not in ours.stderr, ours.stderr
