"""The `_target_` allowlist names exact classes and functions: every shipped config builds, no loader can be named."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

import eve_lightning
from eve_lightning.utils.config_checks import ALLOWED_TARGETS, ConfigError, check_targets
from tests.helpers.repo_paths import CONF

pytestmark = pytest.mark.reliability


def config_with_target(target: str, extra: list[str] | None = None):
    return OmegaConf.create(
        {"security": {"extra_targets": extra or []}, "callbacks": {"x": {"_target_": target, "path": "ckpt"}}}
    )


def test_every_target_in_the_shipped_configs_is_allowed_and_every_allowed_one_imports():
    shipped = set()
    for path in CONF.rglob("*.yaml"):
        shipped |= set(re.findall(r"^\s*_target_:\s*([\w.]+)", path.read_text(), flags=re.M))
    assert shipped and shipped <= ALLOWED_TARGETS, shipped - ALLOWED_TARGETS
    for target in sorted(ALLOWED_TARGETS):
        assert callable(get_object(target)), target


def loader_like_functions() -> list[str]:
    """Every function or class of eve_lightning whose name says it loads, reads, converts or imports weights."""
    names = []
    for mod in pkgutil.walk_packages(eve_lightning.__path__, "eve_lightning."):
        if mod.name.endswith(("__main__", ".webui.server")):
            continue
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == mod.name:
                if re.search(r"load|read|consolidate|convert|import|restore|main|cli", name, re.I):
                    names.append(f"{mod.name}.{name}")
    return names


DANGEROUS = [
    "lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict",
    "lightning.pytorch.core.saving.load_hparams_from_yaml",
    "lightning.pytorch.Trainer",
    "torch.load",
    "hydra.utils.get_class",
    "hydra.utils.get_method",
    "builtins.exec",
    "os.system",
    "subprocess.run",
]


@pytest.mark.parametrize("target", [*DANGEROUS, *loader_like_functions()])
def test_loaders_and_code_runners_are_refused(target):
    with pytest.raises(ConfigError, match=rf"callbacks.x._target_={re.escape(target)} is not in the .*allowlist"):
        check_targets(config_with_target(target))


def test_loader_scan_finds_the_loaders():
    found = loader_like_functions()
    for name in ("eve_lightning.inference.loading.load_model", "eve_lightning.checkpoints.safe_load.safe_load",
                 "eve_lightning.checkpoints.sharded_folders.consolidate_deepspeed_folder"):  # fmt: skip
        assert name in found


def test_extra_targets_admit_exact_names_only():
    check_targets(config_with_target("tests_helpers.Callback", extra=["tests_helpers.Callback"]))
    with pytest.raises(ConfigError, match="not in the instantiation allowlist"):
        check_targets(config_with_target("tests_helpers.CallbackX", extra=["tests_helpers.Callback"]))
    old = OmegaConf.create({"security": {"extra_target_prefixes": ["eve_lightning."]}})
    with pytest.raises(ConfigError, match=r"extra_target_prefixes is no longer read: .*security.extra_targets"):
        check_targets(old)
