"""model.eve.autocast_residual: the decoder's residual stream in the autocast dtype, the same loss up to rounding.

Checked on the CPU's bf16 autocast for EVE v1 (conf/model/tiny.yaml) and EVEv2 (the tiny routed model): the hidden
states between decoder blocks are bf16 with the switch and float32 without it; without autocast the switch changes
nothing.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.models.llm import residual_dtype
from tests.helpers.repo_paths import REPO
from tests.helpers.views import make_batch
from tests.models.evev2.helpers import packed_batch, tiny_vlm


def _block_dtypes(decoder) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []

    def hook(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).dtype)

    return seen, [layer.register_forward_hook(hook) for layer in decoder.layers]


def _v1_loss(flag: bool, autocast: bool) -> tuple[torch.Tensor, set[torch.dtype]]:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml"), resolve=True)
    assert cfg["eve"]["autocast_residual"] is False  # off unless asked
    cfg["eve"]["autocast_residual"] = flag
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    seen, handles = _block_dtypes(model.vlm.llm.get_decoder())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(make_batch(672))
    out.loss.backward()
    for h in handles:
        h.remove()
    return out.loss.detach(), set(seen)


def test_eve_v1_residual_in_bf16_under_autocast_with_the_same_loss():
    base, base_dtypes = _v1_loss(False, autocast=True)
    half, half_dtypes = _v1_loss(True, autocast=True)
    assert base_dtypes == {torch.float32} and half_dtypes == {torch.bfloat16}
    assert abs(float(half) - float(base)) <= 1e-3 * abs(float(base))
    assert float(half) != float(base)  # the stream really changed precision


def test_without_autocast_the_switch_changes_nothing():
    base, base_dtypes = _v1_loss(False, autocast=False)
    half, half_dtypes = _v1_loss(True, autocast=False)
    assert base_dtypes == half_dtypes == {torch.float32}
    assert torch.equal(base, half)


def test_evev2_residual_in_bf16_under_autocast_with_the_same_loss():
    batch = packed_batch([[0, 1], [2]])
    inputs = {k: v for k, v in batch.items() if k != "sample_index"}
    losses = {}
    for flag in (False, True):
        vlm = tiny_vlm(autocast_residual=flag)
        seen, handles = _block_dtypes(vlm.llm.get_decoder())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[flag] = vlm(**inputs).loss.detach()
        for h in handles:
            h.remove()
        assert set(seen) == {torch.bfloat16 if flag else torch.float32}
    assert abs(float(losses[True]) - float(losses[False])) <= 2e-3 * abs(float(losses[False]))


@pytest.mark.parametrize("autocast", [False, True])
def test_residual_dtype_follows_the_weights_unless_asked_under_autocast(autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert residual_dtype(torch.float32, torch.device("cpu"), False) == torch.float32
        want = torch.bfloat16 if autocast else torch.float32
        assert residual_dtype(torch.float32, torch.device("cpu"), True) == want
