"""Training FLOPs of a decoder, for the MFU estimate (the usual 6N + attention rule)."""

from __future__ import annotations


def decoder_flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, weights_trained: bool) -> float:
    """Matmul FLOPs per token of one training step (forward + backward), the training callback's estimate.

    Forward costs 2 FLOPs per parameter and token, plus 4 * L * T * H for the attention scores and values over the
    whole row of ``seq_len`` tokens (PaLM's MFU convention, which does not halve for causality: 6N + 12 * L * H * T
    for a full step). Backward costs twice the forward when weights are trained, once when only activations need
    gradients (a frozen LLM that still passes gradients to the image tokens). Every parameter, the LM head's
    included, counts at every token: a rough per-token figure, not the benchmark's count (``samples_flops``).

    Args:
        n_params: decoder parameters excluding the input embedding.
        n_layers: decoder layers.
        hidden: decoder width.
        seq_len: tokens per row.
        weights_trained: whether the decoder's weights get gradients.
    """
    forward = 2 * n_params + 4 * n_layers * hidden * seq_len
    return forward * (3 if weights_trained else 2)


def samples_flops(
    n_params: int,
    n_layers: int,
    hidden: int,
    lengths: list[float],
    weights_trained: bool,
    head_params: int = 0,
    supervised: list[float] | None = None,
) -> float:
    """Decoder FLOPs of a step over samples of the given lengths, the convention of ``eve_lightning.bench.train``.

    Trained decoder: 6 FLOPs per parameter and token plus causal attention, 6 * L * H * sum(len^2) (scores and
    values, forward and backward, half the square). Frozen decoder: 4 per parameter and token (no weight
    gradients) and 4/6 of the attention term. The LM head (``head_params``) counts only at the supervised positions
    (positions whose next label is supervised, ``supervised`` per sample), where our model computes logits:
    ``(6 or 4) * (n_params * sum(lengths) + head_params * sum(supervised)) + attention``. Without ``supervised`` the
    head counts at every token, the benchmark's earlier convention (its JSONs without ``mfu_head_every_token``, whose
    count put the head in ``n_params``). The planner projects time with this count so that the MFU measured by the
    benchmark applies.

    Args:
        n_params: decoder parameters without the input embedding and without the LM head's ``head_params``.
        n_layers: decoder layers.
        hidden: decoder width.
        lengths: tokens of each sample.
        weights_trained: whether the decoder's weights get gradients.
        head_params: parameters of the LM head (its weight, also when tied to the input embedding).
        supervised: supervised positions of each sample; None: every token.
    """
    attn = 6 * n_layers * hidden * sum(n * n for n in lengths)
    tokens = sum(lengths)
    head_tokens = tokens if supervised is None else sum(supervised)
    per_param = 6 if weights_trained else 4
    return per_param * (n_params * tokens + head_params * head_tokens) + (attn if weights_trained else attn * 4 / 6)
