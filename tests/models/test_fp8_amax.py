"""FP8's separate amax (models.fp8.abs_max): the same scales, casts and gradients as torchao's own reduction.

torchao's float8 layers run on CPU in its emulation mode (float8 values, high-precision matmuls), which is enough
to check that taking the amax from ``abs_max`` changes no number.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from eve_lightning.models.fp8 import abs_max, convert_decoder_to_fp8, use_separate_amax

float8_utils = pytest.importorskip("torchao.float8.float8_utils")
from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # noqa: E402

TORCHAO_OWN = float8_utils.tensor_to_amax  # before anything here replaced it


@pytest.fixture(autouse=True)
def _torchao_own_amax_afterwards():
    yield
    use_separate_amax(False)  # the patch is process-wide: leave torchao as found
    assert float8_utils.tensor_to_amax is TORCHAO_OWN


def test_abs_max_is_the_largest_magnitude_as_float32():
    x = torch.randn(37, 53, dtype=torch.bfloat16)
    x[5, 7] = -300.0  # the largest magnitude is negative
    out = abs_max(x)
    assert out.dtype == torch.float32 and out.shape == ()
    assert out.item() == 300.0 == x.abs().max().float().item()
    assert abs_max(torch.zeros(4, 4)).item() == 0.0


def test_abs_max_is_not_fused_into_the_kernel_that_produces_its_input():
    """Inductor's generated code calls the operator on a materialized buffer; torchao's own reduction it fuses."""
    from torch._inductor.utils import run_and_get_code

    def separate(x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(x) * 2.0
        return y / abs_max(y)

    def fused(x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(x) * 2.0
        return y / y.abs().max()

    x = torch.randn(64, 48)
    torch._dynamo.reset()
    out, code = run_and_get_code(torch.compile(separate, fullgraph=True), x)
    torch.testing.assert_close(out, separate(x))
    calls = [line for line in "\n".join(code).splitlines() if "torch.ops.eve_lightning.abs_max.default(" in line]
    assert len(calls) == 1 and "buf" in calls[0]  # one call, on a buffer an earlier kernel wrote
    _, code = run_and_get_code(torch.compile(fused, fullgraph=True), x)
    assert "eve_lightning" not in "\n".join(code)


def _mlp_grads(separate: bool, recipe: str = "tensorwise"):
    use_separate_amax(separate)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128, bias=False), nn.SiLU(), nn.Linear(128, 64, bias=False))
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=True)
    convert_to_float8_training(mlp, config=config)
    x = torch.randn(48, 64, requires_grad=True)
    y = mlp(x)
    (y * torch.linspace(-2, 3, 64)).sum().backward()  # a non-uniform upstream gradient
    return [y.detach(), x.grad] + [p.grad for p in mlp.parameters()]


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_layers_give_the_same_numbers_with_either_amax(recipe, monkeypatch):
    import eve_lightning.models.fp8 as fp8

    calls = []
    monkeypatch.setattr(fp8, "abs_max", lambda x: calls.append(tuple(x.shape)) or abs_max(x))
    fused = _mlp_grads(False, recipe)
    assert calls == []
    separate = _mlp_grads(True, recipe)
    # tensorwise: 2 layers x 6 casts (input, weight; output gradient and weight for the input gradient; output
    # gradient and input for the weight gradient) through abs_max; rowwise scales keep torchao's reduction
    assert len(calls) == (12 if recipe == "tensorwise" else 0)
    for a, b in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_patch_routes_tensorwise_scales_through_abs_max_and_can_be_undone(monkeypatch):
    own = float8_utils.tensor_to_amax
    assert own is TORCHAO_OWN
    calls = []
    import eve_lightning.models.fp8 as fp8

    monkeypatch.setattr(fp8, "abs_max", lambda x: calls.append(x.shape) or x.abs().max().float())
    use_separate_amax(True)
    x = torch.randn(8, 16)
    scale = float8_utils.tensor_to_scale(x, torch.float8_e4m3fn)
    assert calls == [(8, 16)]
    rowwise = float8_utils.tensor_to_amax(x, False, None, float8_utils.ScalingGranularity.AXISWISE, -1)
    assert rowwise.shape == (8, 1) and calls == [(8, 16)]  # axiswise scales keep torchao's reduction
    grad_input = torch.randn(8, 16, requires_grad=True)
    assert not float8_utils.tensor_to_amax(grad_input).requires_grad  # no_grad, as torchao's own
    use_separate_amax(True)  # twice: the kept function is still torchao's
    assert float8_utils._eve_lightning_torchao_tensor_to_amax is own
    use_separate_amax(False)
    assert float8_utils.tensor_to_amax is own and not hasattr(float8_utils, "_eve_lightning_torchao_tensor_to_amax")
    assert not float8_utils.tensor_to_amax(grad_input).requires_grad
    torch.testing.assert_close(float8_utils.tensor_to_scale(x, torch.float8_e4m3fn), scale, rtol=0, atol=0)


def test_an_unknown_amax_mode_is_refused_before_anything_changes():
    with pytest.raises(ValueError, match=r"amax='late': use one of separate, fused \(.*--fp8-amax\)"):
        convert_decoder_to_fp8(nn.Sequential(nn.Linear(32, 32)), "tensorwise", amax="late")
