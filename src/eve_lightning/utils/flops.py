"""Useful training FLOPs of a decoder step, the one count behind every MFU of the project.

``step_flops`` holds the convention; the benchmark (``bench.train``, through ``samples_flops``), the planner
(``samples_flops``, ``routed_flops``) and the training callback's ``perf/mfu`` (``callbacks.throughput``, from the
model's per-batch totals) all rest on it, so their MFUs compare:

- every decoder parameter other than the input embedding and the LM head: 6 FLOPs per real token when the weights
  the token runs are trained (forward 2, backward 4), 4 when they are frozen (the backward still passes gradients
  to earlier tokens but computes no weight gradient). Padding counts nothing.
- the LM head (its weight, also when tied to the input embedding): 6 or 4 per parameter at the supervised positions
  only (positions whose next label is supervised), where the model computes logits.
- causal attention (scores and values) within each sample: 6 x layers x width x len^2 per sample (forward
  2 x 2 x L x H x len^2 / 2 for the causal half, times 3 for the step); 4/6 of that when no weights are trained.
  Packed rows count each sample's own square, never the row's.
- EVEv2's routed decoder: each token runs one branch (text weights, or the vision copies for image tokens), of the
  same size, so the vision copies are not added; each token counts 6 or 4 as its branch's weights train.
"""

from __future__ import annotations

import torch


def step_flops(
    params: int,
    layers: int,
    hidden: int,
    tokens: float,
    sum_len_sq: float,
    trained: bool,
    head_params: int = 0,
    supervised: float | None = None,
    image_tokens: float = 0,
    vision_trained: bool | None = None,
) -> float:
    """Useful decoder FLOPs of one step (forward + backward) from a batch's totals.

    ``(6|4) x (params x text tokens + head_params x supervised) + (6|4) x params x image tokens + attention``, with
    attention ``6 x layers x hidden x sum_len_sq`` (x 4/6 when neither branch trains); see the module docstring.

    Args:
        params: decoder parameters of one branch without the input embedding and without the LM head.
        layers: decoder layers.
        hidden: decoder width.
        tokens: real tokens of the batch (image tokens included).
        sum_len_sq: sum over the batch's samples of each sample's token count squared.
        trained: whether the text weights (and the LM head) get gradients; EVE v1: the decoder's weights.
        head_params: parameters of the LM head (0: counted in ``params``).
        supervised: supervised positions of the batch, where the LM head runs; None: every token.
        image_tokens: tokens of ``tokens`` that run the vision branch (EVEv2's image tokens; 0 for one branch).
        vision_trained: whether the weights the image tokens run get gradients; None: as ``trained``.
    """
    vision_trained = trained if vision_trained is None else vision_trained
    text_tokens = tokens - image_tokens
    head_tokens = tokens if supervised is None else supervised
    per_text = 6 if trained else 4
    per_image = 6 if vision_trained else 4
    attn = 6 * layers * hidden * sum_len_sq
    attn = attn if (trained or vision_trained) else attn * 4 / 6
    return per_text * (params * text_tokens + head_params * head_tokens) + per_image * params * image_tokens + attn


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

    ``step_flops`` over the samples' totals: trained decoder, 6 FLOPs per parameter and token plus causal attention,
    6 * L * H * sum(len^2); frozen decoder, 4 per parameter and token and 4/6 of the attention term. The LM head
    (``head_params``) counts only at the supervised positions (``supervised`` per sample), where our model computes
    logits: ``(6 or 4) * (n_params * sum(lengths) + head_params * sum(supervised)) + attention``. Without
    ``supervised`` the head counts at every token, the benchmark's earlier convention (its JSONs without
    ``mfu_head_every_token``, whose count put the head in ``n_params``). The planner projects time with this count
    so that the MFU measured by the benchmark applies.

    Args:
        n_params: decoder parameters without the input embedding and without the LM head's ``head_params``.
        n_layers: decoder layers.
        hidden: decoder width.
        lengths: tokens of each sample.
        weights_trained: whether the decoder's weights get gradients.
        head_params: parameters of the LM head (its weight, also when tied to the input embedding).
        supervised: supervised positions of each sample; None: every token.
    """
    return step_flops(
        n_params,
        n_layers,
        hidden,
        sum(lengths),
        sum(n * n for n in lengths),
        weights_trained,
        head_params,
        None if supervised is None else sum(supervised),
    )


def routed_flops(
    params: int,
    layers: int,
    hidden: int,
    image_tokens: float,
    text_tokens: float,
    vision_trained: bool,
    text_trained: bool,
    head_params: int = 0,
    supervised: float | None = None,
) -> float:
    """Decoder FLOPs of one EVEv2 sample whose tokens each run one branch (text or vision weights, same size).

    ``step_flops`` for one sample: 6 FLOPs per parameter and token whose weights train, 4 when they are frozen; the
    LM head (one, with the text weights: 6 or 4 as they) at the ``supervised`` positions only; causal attention over
    the whole sample, 6 x layers x width x len^2 when any weights train, 4/6 of that otherwise. With both branches
    trained (or both frozen) it equals ``samples_flops``.

    Args:
        params: decoder parameters of one branch without the input embedding and without the LM head.
        layers: decoder layers.
        hidden: decoder width.
        image_tokens: image tokens of the sample (the vision branch's).
        text_tokens: text tokens of the sample.
        vision_trained: the weights image tokens run get gradients.
        text_trained: the weights text tokens run (and the LM head) get gradients.
        head_params: parameters of the LM head (0: counted in ``params``, at every token).
        supervised: supervised positions of the sample; None: every token.
    """
    n = image_tokens + text_tokens
    return step_flops(
        params, layers, hidden, n, n * n, text_trained, head_params, supervised, image_tokens, vision_trained
    )


def sample_token_totals(seq_ids: torch.Tensor) -> torch.Tensor:
    """[2] (real tokens, sum over samples of each sample's token count squared) of decoder rows, on their device.

    No read-back: the caller reads both at once. A sample is a (row, sample id) pair.

    Args:
        seq_ids: [B, L] sample index of every token within its row, -1 on padding (a padded layout: 0 on each row's
            real tokens). Ids are below L (they number a row's samples).
    """
    bsz, length = seq_ids.shape
    real = seq_ids >= 0
    rows = torch.arange(bsz, device=seq_ids.device)[:, None]
    bins = (rows * length + seq_ids.clamp(min=0)).flatten()  # [B*L] one bin per (row, sample id)
    counts = torch.zeros(bsz * length, dtype=torch.long, device=seq_ids.device)
    counts.scatter_add_(0, bins, real.flatten().long())
    return torch.stack([counts.sum(), (counts * counts).sum()])
