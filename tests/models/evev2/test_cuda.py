"""EVEv2 on a GPU: bf16 autocast matches float32, routed matches dense, the varlen kernel matches SDPA, no stall."""

from __future__ import annotations

import pytest
import torch

from tests.models.evev2.helpers import packed_batch, padded_batch, tiny_vlm

pytestmark = pytest.mark.gpu
INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_mask", "position_ids", "seq_ids")


def cuda_inputs(batch):
    return {k: batch[k].cuda() for k in INPUTS if k in batch}


def run(vlm, batch, autocast=True):
    vlm.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = vlm(**batch)
    out.loss.backward()
    grads = {n: p.grad.float() for n, p in vlm.named_parameters() if p.grad is not None}
    return out.loss.detach().float(), grads


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_bf16_routed_matches_float32_and_the_dense_formulation(layout):
    batch = cuda_inputs(padded_batch() if layout == "padded" else packed_batch([[0, 1, 2], [3, 4]]))
    routed, dense = tiny_vlm().cuda(), tiny_vlm(routing="dense").cuda()
    ref_loss, _ = run(routed, batch, autocast=False)
    loss, grads = run(routed, batch)
    dense_loss, dense_grads = run(dense, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, dense_loss, rtol=1e-2, atol=1e-2)
    assert grads.keys() == dense_grads.keys() and all(torch.isfinite(g).all() for g in grads.values())
    for name, g in grads.items():
        scale = float(dense_grads[name].abs().max()) + 1e-6
        assert float((g - dense_grads[name]).abs().max()) / scale < 5e-2, name


def test_the_varlen_kernel_on_packed_rows_matches_sdpa():
    batch = cuda_inputs(packed_batch([[0, 1, 2], [3, 4]]))
    sdpa_loss, sdpa_grads = run(tiny_vlm("sdpa").cuda(), batch)
    varlen_loss, varlen_grads = run(tiny_vlm("torch_varlen").cuda(), batch)
    torch.testing.assert_close(varlen_loss, sdpa_loss, rtol=1e-2, atol=1e-2)
    for name, g in varlen_grads.items():
        scale = float(sdpa_grads[name].abs().max()) + 1e-6
        assert float((g - sdpa_grads[name]).abs().max()) / scale < 5e-2, name


def test_nothing_after_the_decoder_reads_back_from_the_device():
    vlm = tiny_vlm().cuda()
    batch = cuda_inputs(padded_batch())
    vlm(**batch)  # the first call may synchronise while initialising
    vlm.llm.get_decoder().register_forward_hook(lambda *a: torch.cuda.set_sync_debug_mode("error"))
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = vlm(**batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.n_ce_tokens > 0 and out.stats["n_image_tokens"] > 0
