"""PatchConv2d computes a stride == kernel convolution as one matrix product: same outputs, gradients and keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eve_lightning.models.patch_embedding import PatchEmbedding
from eve_lightning.models.patchify import PatchConv2d


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("size", [(56, 56), (60, 45)])  # 60x45: a partial last patch is ignored, as by the conv
def test_outputs_and_gradients_equal_the_convolution(bias, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, kernel_size=14, stride=14, bias=bias)
    fast = PatchConv2d.from_conv(conv)
    assert fast.weight is conv.weight and list(fast.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 3, *size)
    want, got = conv(x), fast(x)
    assert got.shape == want.shape == (2, 16, size[0] // 14, size[1] // 14)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (g_want,) = torch.autograd.grad((want * torch.arange(want.numel()).view_as(want).sin()).sum(), conv.weight)
    (g_got,) = torch.autograd.grad((got * torch.arange(got.numel()).view_as(got).sin()).sum(), conv.weight)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-4)


def test_other_convolutions_fall_back_to_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1)
    x = torch.randn(1, 3, 10, 10)
    torch.testing.assert_close(PatchConv2d.from_conv(conv)(x), conv(x))


def test_the_patch_embedding_uses_it_and_loads_old_conv_weights():
    pel = PatchEmbedding(hidden=32, num_heads=4)
    assert isinstance(pel.conv, PatchConv2d)
    old = {"conv.weight": torch.randn(32, 3, 14, 14)}
    pel.load_state_dict(old, strict=False)
    torch.testing.assert_close(pel.conv.weight, old["conv.weight"])
