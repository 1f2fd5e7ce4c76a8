"""The fused LM-head + cross-entropy paths give the default path's loss and gradients; unavailable switches refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eve_lightning.constants import IGNORE_INDEX
from eve_lightning.models.fp8 import Fp8Unavailable, convert_decoder_to_fp8, is_decoder_linear
from eve_lightning.models.fused_ce import linear_cross_entropy_sum
from eve_lightning.models.losses import causal_lm_loss


def _case(bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 37, 48, generator=gen)  # [B, L, H]
    labels = torch.randint(0, 500, (3, 37), generator=gen)
    labels[torch.rand(3, 37, generator=gen) < 0.4] = IGNORE_INDEX  # about 60 % supervised
    labels[1] = IGNORE_INDEX  # a row with nothing supervised
    head = nn.Linear(48, 500, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(500, 48, generator=gen) * 0.2)
    return hidden, labels, head


def _loss_and_grads(impl: str, hidden, labels, head, chunk_size: int):
    h = hidden.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss, n = causal_lm_loss(h, labels, head, chunk_size=chunk_size, impl=impl)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    grads = [h.grad] + [p.grad for p in head.parameters()]
    return loss.detach(), n, grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 4096])  # several chunks (one partial) and a single one
def test_fused_equals_the_default_path_in_float32(bias, chunk_size):
    hidden, labels, head = _case(bias)
    ref_loss, ref_n, ref_grads = _loss_and_grads("torch", hidden, labels, head, chunk_size)
    loss, n, grads = _loss_and_grads("fused", hidden, labels, head, chunk_size)
    assert n == ref_n == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert len(grads) == len(ref_grads) == (3 if bias else 2)
    for got, want in zip(grads, ref_grads):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_under_bf16_autocast_matches_the_default_path_to_bf16_rounding():
    hidden, labels, head = _case(bias=False, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, _, ref_grads = _loss_and_grads("torch", hidden, labels, head, 16)
        loss, _, grads = _loss_and_grads("fused", hidden, labels, head, 16)
    assert abs(float(loss) - float(ref_loss)) / float(ref_loss) < 1e-3
    assert grads[0].dtype == ref_grads[0].dtype and grads[1].dtype == torch.float32  # master weight keeps float32
    for got, want in zip(grads, ref_grads):
        cos = torch.nn.functional.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0)
        assert cos > 0.999


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, labels, head = _case(bias=False)
    head.requires_grad_(False)
    _, _, ref = _loss_and_grads("torch", hidden, labels, head, 64)
    _, _, got = _loss_and_grads("fused", hidden, labels, head, 64)
    assert head.weight.grad is None
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)


def test_nothing_supervised_gives_an_exact_zero_with_a_graph():
    hidden, _, head = _case(bias=False)
    labels = torch.full((3, 37), IGNORE_INDEX)
    h = hidden.clone().requires_grad_(True)
    loss, n = causal_lm_loss(h, labels, head, impl="fused")
    assert n == 0 and float(loss.detach()) == 0.0 and loss.requires_grad


def test_unavailable_or_unknown_switches_refuse_with_the_fix():
    h, t = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    w = torch.randn(16, 8)
    with pytest.raises(ValueError, match=r"ce_impl=liger runs on CUDA only; use model.eve.ce_impl=fused"):
        linear_cross_entropy_sum(h, w, None, t, "liger")
    with pytest.raises(ValueError, match=r"unknown ce_impl 'fast': choose one of torch, fused, liger"):
        linear_cross_entropy_sum(h, w, None, t, "fast")
    with pytest.raises(ValueError, match=r"partitioned .*ZeRO-3.*ce_impl=torch"):
        linear_cross_entropy_sum(h, torch.empty(0), None, t, "fused")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_fp8_refuses_without_an_fp8_gpu_and_names_the_fix():
    llm = nn.Sequential(nn.Linear(32, 32))
    with pytest.raises(Fp8Unavailable, match=r"no CUDA device here: set model.fp8=null"):
        convert_decoder_to_fp8(llm, "tensorwise")
    with pytest.raises(ValueError, match=r"'fp4' is not a float8 recipe: use one of tensorwise, rowwise"):
        convert_decoder_to_fp8(llm, "fp4")


def test_fp8_applies_to_the_decoder_projections_only():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.down_proj, self.lm_head = nn.Linear(64, 64), nn.Linear(128, 64), nn.Linear(64, 64)
            self.up_proj = nn.Linear(64, 40)  # 40 is not a multiple of 16: the FP8 kernels refuse it

    block = Block()
    picked = [name for name, m in block.named_modules() if is_decoder_linear(m, name)]
    assert picked == ["q_proj", "down_proj"]


def test_the_tiny_model_trains_the_same_with_the_fused_loss():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.helpers.repo_paths import REPO
    from tests.helpers.views import make_batch

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml"), resolve=True)
    batch = make_batch(672)
    results = {}
    for impl in ("torch", "fused"):
        cfg["eve"]["ce_impl"] = impl
        torch.manual_seed(0)
        model = instantiate(cfg, _convert_="all")
        out = model(batch)
        out.loss.backward()
        head = model.vlm.llm.get_output_embeddings().weight.grad
        results[impl] = (out.loss_ce, out.loss, head, model.vlm.projector.fc1.weight.grad)
    for got, want in zip(results["fused"], results["torch"]):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_a_model_config_asking_for_fp8_is_refused_at_build_without_an_fp8_gpu():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.helpers.repo_paths import REPO

    cfg = OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml")
    assert cfg.fp8 is None and cfg.eve.ce_impl == "torch"  # the defaults stay off
    cfg.fp8 = "tensorwise"
    with pytest.raises(Exception, match=r"set model\.fp8=null") as info:
        instantiate(cfg, _convert_="all")
    assert isinstance(info.value, Fp8Unavailable) or isinstance(info.value.__cause__, Fp8Unavailable)


@pytest.mark.parametrize("max_length", [2048, 203])  # no cut, and a cut inside some rows (not a multiple of 16)
def test_rows_padded_to_a_multiple_of_16_give_the_same_losses_and_gradients(max_length):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.helpers.repo_paths import REPO
    from tests.helpers.views import make_batch

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml"), resolve=True)
    cfg["eve"]["max_length"] = max_length
    batch = make_batch(672)
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all")
    results = {}
    for multiple in (1, 16):
        model.vlm.config.pad_to_multiple_of = multiple
        model.zero_grad(set_to_none=True)
        mm = model.vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                      batch["pixel_mask"], batch["labels"])  # fmt: skip
        left = model.vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                        batch["pixel_mask"], pad_side="left")  # fmt: skip
        out = model(batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[multiple] = (mm, left, out, grads)
    (mm1, left1, out1, g1), (mm16, left16, out16, g16) = results[1], results[16]
    assert mm16.inputs_embeds.shape[1] % 16 == 0 and left16.inputs_embeds.shape[1] % 16 == 0
    assert mm16.inputs_embeds.shape[1] - mm1.inputs_embeds.shape[1] < 16
    assert int(mm16.attention_mask.sum()) == int(mm1.attention_mask.sum())  # the same tokens kept, the rest padding
    torch.testing.assert_close(mm16.n_truncated, mm1.n_truncated)
    torch.testing.assert_close(left16.inputs_embeds[:, -left1.inputs_embeds.shape[1] :], left1.inputs_embeds)
    assert out16.n_ce_tokens == out1.n_ce_tokens and out16.n_align_images == out1.n_align_images
    torch.testing.assert_close(out16.loss, out1.loss, atol=1e-5, rtol=1e-5)
    assert len(g16) == len(g1)
    for a, b in zip(g16, g1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
