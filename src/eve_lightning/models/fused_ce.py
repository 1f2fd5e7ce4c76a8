"""Fused linear + cross-entropy: the LM head and the loss in one pass, chunk by chunk, never keeping the logits.

``causal_lm_loss`` picks one of three ways to turn the supervised hidden states into the summed next-token loss
(``EveConfig.ce_impl``):

* ``torch``: ``lm_head(h).float()`` then ``F.cross_entropy`` per chunk; autograd keeps each chunk's float32
  log-probabilities [k, V] for the backward.
* ``fused``: ``FusedLinearCrossEntropy`` below (plain PyTorch, any device): the forward computes each chunk's
  logits, its loss and, right away, the chunk's gradients with respect to the hidden states and the head's weight;
  only those gradients are kept (``[K, H]`` and ``[V, H]``), not the ``[K, V]`` logits. The backward scales them.
* ``liger``: Liger-Kernel's Triton kernel of the same idea (CUDA only; the ``liger-kernel`` package).

All three give the same loss and gradients up to the rounding of the matmul dtype (tests/models/test_fused_ce.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CE_IMPLS = ("torch", "fused", "liger")


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, gradients formed in the forward.

    Matmuls run in the dtype autocast gives them (bf16 under bf16 autocast), the softmax in float32, as
    ``lm_head(h).float()`` followed by ``F.cross_entropy`` does.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        # hidden: [K, H]; weight: [V, H]; bias: [V] or None; targets: [K] int64
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None  # [K, H]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None  # [V, H]
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None  # [V]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]  # [k, H]
            t = targets[start : start + chunk_size]  # [k]
            logits = F.linear(h, weight, bias)  # [k, V] in the autocast dtype
            logp = torch.log_softmax(logits.float(), dim=-1)  # [k, V]
            total = total + F.nll_loss(logp, t, reduction="sum")
            dlogits = logp.exp_()  # softmax
            dlogits[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # d(sum CE) / d logits, [k, V]
            dlogits = dlogits.to(logits.dtype)
            if need_h:
                grad_h[start : start + chunk_size] = (dlogits @ weight.to(logits.dtype)).to(hidden.dtype)
            if need_w:
                grad_w += dlogits.T @ h.to(logits.dtype)  # [V, H], accumulated in float32
            if need_b:
                grad_b += dlogits.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out.float()
        out_h = (grad_h.float() * scale).to(grad_h.dtype) if grad_h is not None else None
        out_w = grad_w * scale if grad_w is not None else None
        out_b = grad_b * scale if grad_b is not None else None
        return out_h, out_w, out_b, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    impl: str,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Sum over the K rows of ``CE(hidden @ weight.T + bias, targets)`` by ``impl`` (see the module docstring).

    Args:
        hidden: [K, H] hidden states at supervised positions.
        weight: [V, H] output projection (the LM head's full weight; ZeRO-3 partitions are refused).
        bias: [V] or None.
        targets: [K] token ids.
        impl: ``fused`` or ``liger`` (``torch`` is ``causal_lm_loss``'s own loop).
        chunk_size: rows per chunk of the ``fused`` path.
    """
    if weight.numel() == 0:
        raise ValueError(
            f"model.eve.ce_impl={impl} reads the LM head's weight directly, but it is partitioned (DeepSpeed ZeRO-3); "
            "use model.eve.ce_impl=torch with ZeRO-3"
        )
    if impl == "fused":
        return FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)
    if impl == "liger":
        if not hidden.is_cuda:
            raise ValueError("model.eve.ce_impl=liger runs on CUDA only; use model.eve.ce_impl=fused on this device")
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError as err:
            raise ImportError(
                "model.eve.ce_impl=liger needs the liger-kernel package (pip install liger-kernel); "
                "or use model.eve.ce_impl=fused"
            ) from err
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
        b = bias.to(dtype) if bias is not None else None
        loss = liger_fused_linear_cross_entropy(hidden.to(dtype), weight.to(dtype), targets, b, reduction="sum")
        return loss.float()
    raise ValueError(f"unknown ce_impl {impl!r}: choose one of {', '.join(CE_IMPLS)}")
