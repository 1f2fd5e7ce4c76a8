"""GPU correctness of the model: bf16 autocast matches float32, gradients are finite (run with `make test-gpu`)."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers.views import make_batch

pytestmark = pytest.mark.gpu


def to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.parametrize("side", [672, 1344])
def test_bf16_autocast_matches_float32_on_cuda(tiny_model_cfg, side):
    cfg = copy.deepcopy(tiny_model_cfg)
    cfg["eve"]["image_size"] = side
    cfg["eve"]["max_length"] = 4096
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all").cuda()
    batch = to(make_batch(side), "cuda")
    with torch.no_grad():
        ref = model(batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)
    out.loss.backward()
    torch.testing.assert_close(out.loss_ce, ref.loss_ce, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.loss_align, ref.loss_align, rtol=2e-2, atol=2e-2)
    grads = [p.grad for p in model.vlm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_nothing_after_the_decoder_reads_back_from_the_device(tiny_model_cfg):
    # every count the losses need is read before the decoder is queued: a read-back after it would stall the host
    # until the whole decoder forward had run, and leave the GPU waiting for the losses and the backward
    torch.manual_seed(0)
    model = instantiate(tiny_model_cfg, _convert_="all").cuda()
    batch = to(make_batch(672), "cuda")
    model(batch)  # the first call may synchronise while initialising
    model.vlm.llm.get_decoder().register_forward_hook(lambda *a: torch.cuda.set_sync_debug_mode("error"))
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.n_align_images == 3 and out.n_ce_tokens > 0
