"""Training FLOPs per token of a decoder, for the MFU estimate (the usual 6N + attention rule)."""

from __future__ import annotations


def decoder_flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, weights_trained: bool) -> float:
    """Matmul FLOPs per token of one training step (forward + backward).

    Forward costs 2 FLOPs per parameter and token, plus 4 * L * T * H for the attention scores and values
    (PaLM's MFU convention, which does not halve for causality: 6N + 12 * L * H * T for a full step). Backward
    costs twice the forward when weights are trained, once when only activations need
    gradients (a frozen LLM that still passes gradients to the image tokens).

    Args:
        n_params: decoder parameters excluding the input embedding.
        n_layers: decoder layers.
        hidden: decoder width.
        seq_len: tokens per row.
        weights_trained: whether the decoder's weights get gradients.
    """
    forward = 2 * n_params + 4 * n_layers * hidden * seq_len
    return forward * (3 if weights_trained else 2)
