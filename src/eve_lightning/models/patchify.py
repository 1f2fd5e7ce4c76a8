"""Non-overlapping patch convolutions as one matrix product.

EVE's patch embedding and the CLIP teacher both open with a convolution whose stride equals its kernel (14 px):
every output pixel reads one patch, and no patch is shared. With three input channels, cuDNN runs such a layer far
below the matrix-multiply rate (on an H100, 2.5 ms per call on average for 32 canvases, 89 GFLOP at 672 px).
Cutting the image into patches and multiplying by the flattened kernel gives the same numbers in one GEMM, forward
and backward.

``PatchConv2d`` is a drop-in ``nn.Conv2d``: same parameters and state-dict keys, same [N, C_out, H', W'] output
(a channels-last view), so checkpoints and callers do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchConv2d(nn.Conv2d):
    """``nn.Conv2d`` with stride == kernel, no padding, dilation or groups, computed as patches @ kernel.

    Other settings fall back to the convolution. Like the convolution, rows and columns of pixels past the last
    whole patch are ignored.
    """

    def _is_patchify(self) -> bool:
        return (
            tuple(self.stride) == tuple(self.kernel_size)
            and self.padding in ((0, 0), 0, "valid")
            and tuple(self.dilation) == (1, 1)
            and self.groups == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C_out, H // p, W // q] (a permuted view of a channels-last result)."""
        if not self._is_patchify():
            return super().forward(x)
        n, c, height, width = x.shape
        p, q = self.kernel_size
        gh, gw = height // p, width // q
        x = x[:, :, : gh * p, : gw * q]
        patches = x.reshape(n, c, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5).reshape(n, gh, gw, c * p * q)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)  # [N, gh, gw, C_out]
        return out.permute(0, 3, 1, 2)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PatchConv2d:
        """The same layer, holding ``conv``'s own parameters (no copy)."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        new.weight = conv.weight
        new.bias = conv.bias
        return new
