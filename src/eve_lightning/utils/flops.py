"""Useful training FLOPs of a decoder step, the one count behind every MFU of the project.

``step_flops`` holds the convention and ``decoder_params`` the split of a decoder's parameters it takes; the
benchmark (``bench.train.decoder_flops``), the planner (``planner.parameters``, ``planner.stage``) and the training
callback's ``perf/mfu`` (``callbacks.throughput``, from the model's per-batch totals and the counts the training
module takes when it builds the model) all rest on them, so their MFUs compare:

- every decoder parameter other than the input embedding and the LM head: 6 FLOPs per real token the parameter
  runs on when it is trained (forward 2, backward 4), 4 when it is frozen (the backward still passes gradients
  to earlier tokens but computes no weight gradient); a partly frozen decoder counts each part at its own rate.
  Padding counts nothing.
- the LM head (its weight, also when tied to the input embedding): 6 or 4 per parameter, as it trains or not, at
  the supervised positions only (positions whose next label is supervised), where the model computes logits.
- causal attention (scores and values) within each sample: 6 x layers x width x len^2 per sample (forward
  2 x 2 x L x H x len^2 / 2 for the causal half, times 3 for the step) when any decoder weight trains; 4/6 of that
  when none does. Packed rows count each sample's own square, never the row's.
- EVEv2's routed decoder: each token runs one branch of the same size, text tokens the text weights, image tokens
  the vision copies where the decoder has them (the text weights elsewhere), so the vision copies are not added;
  each parameter counts 6 or 4 per token as it trains or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn


def full_numel(p: torch.Tensor) -> int:
    """Full size of a parameter, also when DeepSpeed ZeRO-3 has partitioned it away (its ``ds_numel``)."""
    return int(getattr(p, "ds_numel", p.numel()))


@dataclass(frozen=True)
class DecoderParams:
    """The decoder parameter counts the useful FLOP count needs, split by what runs them and whether they train.

    Attributes:
        trained: parameters of the text branch, without the input embedding and the LM head, that get gradients.
        frozen: the text branch's other parameters (without the input embedding and the LM head).
        head: parameters of the LM head (the input embedding's when tied: it still runs).
        head_trained: whether the LM head gets gradients.
        layers: decoder layers.
        hidden: decoder width.
        image: (trained, frozen) parameters the image tokens run, without the input embedding and the LM head:
            EVEv2's vision copies where the decoder has them, the text weights elsewhere (as many as the text
            branch's); None: image tokens run the text branch (EVE v1, EVEv2 without vision copies).
    """

    trained: int
    frozen: int
    head: int
    head_trained: bool
    layers: int
    hidden: int
    image: tuple[int, int] | None = None

    @property
    def body(self) -> int:
        """Parameters of one branch without the input embedding and the LM head."""
        return self.trained + self.frozen

    def whole(self, trained: bool) -> DecoderParams:
        """The same decoder with every weight trained (or every weight frozen)."""
        image = None if self.image is None else ((sum(self.image), 0) if trained else (0, sum(self.image)))
        body = (self.body, 0) if trained else (0, self.body)
        return replace(self, trained=body[0], frozen=body[1], head_trained=trained, image=image)

    def flops(
        self, tokens: float, sum_len_sq: float, supervised: float | None = None, image_tokens: float = 0
    ) -> float:
        """Useful FLOPs of one step over a batch of these totals (``step_flops``)."""
        return step_flops(
            self.trained,
            self.frozen,
            self.layers,
            self.hidden,
            tokens,
            sum_len_sq,
            head=self.head,
            head_trained=self.head_trained,
            supervised=supervised,
            image_tokens=image_tokens,
            image=self.image,
        )


def decoder_params(
    llm: nn.Module,
    numel: Callable[[torch.Tensor], int] = full_numel,
    vision_copies: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
) -> DecoderParams:
    """Split the parameters of a causal LM's decoder for the FLOP count, from their sizes and ``requires_grad``.

    The input embedding is left out (a lookup); the LM head is counted apart (also when tied to the input embedding,
    listed once by ``named_parameters``); vision copies are left out of the text branch and make the image branch,
    in which each replaces its text weight. Take the counts before a sharded strategy (FSDP) replaces parameters by
    shards: ``numel`` must see every parameter whole (the default reads ZeRO-3's ``ds_numel`` when it is set).

    Args:
        llm: an HF causal LM (``get_input_embeddings``, ``get_output_embeddings``, ``config.num_hidden_layers``,
            ``config.hidden_size``).
        numel: full size of a parameter.
        vision_copies: (vision copy, the text weight it stands in for on image tokens) pairs, e.g. EVEv2's
            ``models.evev2.decoder.vision_text_pairs``; none: image tokens run the text weights.
    """
    embed = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    pairs = list(vision_copies)
    vision = {id(v) for v, _ in pairs}
    body = [p for p in llm.parameters() if id(p) not in vision and p is not embed and p is not head]
    trained = sum(numel(p) for p in body if p.requires_grad)
    frozen = sum(numel(p) for p in body if not p.requires_grad)
    image = None
    if pairs:
        image_trained, image_frozen = trained, frozen
        for copy, text in pairs:
            if text is embed or text is head:
                continue
            if text.requires_grad:
                image_trained -= numel(text)
            else:
                image_frozen -= numel(text)
            if copy.requires_grad:
                image_trained += numel(copy)
            else:
                image_frozen += numel(copy)
        image = (image_trained, image_frozen)
    return DecoderParams(
        trained=trained,
        frozen=frozen,
        head=numel(head),
        head_trained=head.requires_grad,
        layers=int(llm.config.num_hidden_layers),
        hidden=int(llm.config.hidden_size),
        image=image,
    )


def step_flops(
    trained: int,
    frozen: int,
    layers: int,
    hidden: int,
    tokens: float,
    sum_len_sq: float,
    *,
    head: int = 0,
    head_trained: bool = False,
    supervised: float | None = None,
    image_tokens: float = 0,
    image: tuple[int, int] | None = None,
) -> float:
    """Useful decoder FLOPs of one step (forward + backward) from a batch's totals.

    ``(6 x trained + 4 x frozen) x text tokens + (6 x image trained + 4 x image frozen) x image tokens + (6|4) x head x
    supervised + attention``, with attention ``6 x layers x hidden x sum_len_sq``, 4/6 of that when no decoder
    weight trains (neither branch nor the head); see the module docstring.

    Args:
        trained: decoder parameters of the text branch, without the input embedding and the LM head, that train.
        frozen: the text branch's other parameters (without the input embedding and the LM head).
        layers: decoder layers.
        hidden: decoder width.
        tokens: real tokens of the batch (image tokens included).
        sum_len_sq: sum over the batch's samples of each sample's token count squared.
        head: parameters of the LM head (0: counted in ``trained`` / ``frozen``).
        head_trained: whether the LM head trains (6 per parameter, else 4).
        supervised: supervised positions of the batch, where the LM head runs; None: every token.
        image_tokens: tokens of ``tokens`` that run ``image`` (EVEv2's image tokens).
        image: (trained, frozen) parameters the image tokens run; None: those of the text branch.
    """
    image_trained, image_frozen = (trained, frozen) if image is None else image
    text_tokens = tokens - image_tokens
    head_tokens = tokens if supervised is None else supervised
    attn = 6 * layers * hidden * sum_len_sq
    attn = attn if (trained or image_trained or head_trained) else attn * 4 / 6
    return (
        (6 * trained + 4 * frozen) * text_tokens
        + (6 if head_trained else 4) * head * head_tokens
        + (6 * image_trained + 4 * image_frozen) * image_tokens
        + attn
    )


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
        n_params if weights_trained else 0,
        0 if weights_trained else n_params,
        n_layers,
        hidden,
        sum(lengths),
        sum(n * n for n in lengths),
        head=head_params,
        head_trained=weights_trained,
        supervised=None if supervised is None else sum(supervised),
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
        params if text_trained else 0,
        0 if text_trained else params,
        layers,
        hidden,
        n,
        n * n,
        head=head_params,
        head_trained=text_trained,
        supervised=supervised,
        image_tokens=image_tokens,
        image=(params, 0) if vision_trained else (0, params),
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
