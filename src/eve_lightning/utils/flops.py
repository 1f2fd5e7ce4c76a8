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


def samples_flops(n_params: int, n_layers: int, hidden: int, lengths: list[float], weights_trained: bool) -> float:
    """Decoder FLOPs of a step over samples of the given lengths, the convention of ``eve_lightning.bench.train``.

    Trained decoder: 6 FLOPs per parameter and token plus causal attention, 6 * L * H * sum(len^2) (scores and
    values, forward and backward, half the square). Frozen decoder: 4 per parameter and token (no weight
    gradients) and 4/6 of the attention term. The planner projects time with this count so that the MFU measured
    by the benchmark applies.
    """
    attn = 6 * n_layers * hidden * sum(n * n for n in lengths)
    tokens = sum(lengths)
    return (6 if weights_trained else 4) * n_params * tokens + (attn if weights_trained else attn * 4 / 6)
