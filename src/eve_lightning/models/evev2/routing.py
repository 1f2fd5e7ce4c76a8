"""Token routing of a modality-split decoder: which tokens run through the text weights, which through the copies.

Every EVEv2 decoder layer holds two copies of its token-wise parts (both RMSNorms, the q/k/v/o projections, the
MLP): image tokens use the vision copy, text and padding tokens the original. Only attention mixes tokens, so a
layer needs the tokens in sequence order at one place only: between its q/k/v projections and its output
projection. ``Routing`` therefore carries the residual stream of the whole decoder as one flat [N, H] matrix
(N = B * L) in *modality order* in ``routed`` mode: the text tokens of the batch first, then the image tokens, each
group in sequence order. A token-wise part runs as two matrix products on two contiguous slices, and each layer
permutes only q, k, v into sequence order and the attention output back (four row gathers per layer, no scatter).

Modes:
  * ``text``: no image token (text-only batches, one-token decoding steps): the stream stays in sequence order and
    only text weights run; no vision weight is touched (unless ``every_branch``, below), so experts get no gradient.
  * ``routed``: the modality order above; each token runs through its own branch only.
  * ``dense``: the original's formulation, kept as a reference for tests and benchmarks: both branches run on every
    token and are blended with the 0/1 mask (about twice the FLOPs of the split parts).

``every_branch`` (``EveV2Config.uniform_module_calls``) makes every part call its text and its vision branch, in that
order, whatever the batch holds: a branch without tokens runs on zero rows and adds zero rows to the output. In
``text`` mode the vision copies then run on zero rows after the text weights; in ``routed`` mode a batch of image
tokens only still calls the text weights. Every forward then calls the same modules in the same order, which
DeepSpeed ZeRO-3 needs (a module's parameters are gathered by a collective of all ranks when it is called). The
zero-row calls change no value and give the vision weights exact zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ROUTINGS = ("routed", "dense")  # what a config may choose; "text" is picked per forward when there is no image token


@dataclass
class Routing:
    """Layout of the residual stream of one decoder forward.

    Attributes:
        mode: "text", "routed" or "dense".
        batch: B of the [B, L] sequence layout.
        length: L of the [B, L] sequence layout.
        n_text: routed: text tokens (the first ``n_text`` rows of the stream).
        perm: routed: [N] int64, stream row -> flat sequence index (b * L + t).
        inverse: routed: [N] int64, flat sequence index -> stream row.
        weight: dense: [N, 1] float, 1.0 on image tokens.
        every_branch: text and routed: call both branches of every part, also one with zero rows.
    """

    mode: str
    batch: int
    length: int
    n_text: int = 0
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    every_branch: bool = False

    @classmethod
    def text_only(cls, batch: int, length: int, every_branch: bool = False) -> Routing:
        return cls("text", batch, length, every_branch=every_branch)

    @classmethod
    def build(
        cls, vision_mask: torch.Tensor | None, mode: str, batch: int, length: int, every_branch: bool = False
    ) -> Routing:
        """The routing of a forward over [B, L] tokens.

        Args:
            vision_mask: bool [B, L], True on image tokens; None = all text.
            mode: "routed" or "dense".
            batch: B.
            length: L.
            every_branch: call the vision branch of every part even when there is no image token (on zero rows),
                and the text branch when there is no text token; dense mode runs both branches anyway.

        Routed mode reads the number of image tokens back from the device (once per forward, not per layer).
        """
        if mode not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
        if vision_mask is None:
            return cls.text_only(batch, length, every_branch)
        if tuple(vision_mask.shape) != (batch, length):
            raise ValueError(f"vision_mask has shape {tuple(vision_mask.shape)}, expected [B, L] = [{batch}, {length}]")
        flat = vision_mask.reshape(-1).bool()  # [N]
        if mode == "dense":
            return cls("dense", batch, length, weight=flat[:, None].float())
        n_vision = int(flat.sum())
        if n_vision == 0:
            return cls.text_only(batch, length, every_branch)
        # stable sort of 0/1 keys: text rows first, then image rows, each in sequence order
        perm = torch.sort(flat.to(torch.int32), stable=True).indices  # [N]
        inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
        n_text = perm.numel() - n_vision
        return cls("routed", batch, length, n_text=n_text, perm=perm, inverse=inverse, every_branch=every_branch)

    @property
    def uses_vision(self) -> bool:
        """Whether any vision weight runs in this forward (on zero rows, with ``every_branch``)."""
        return self.mode != "text" or self.every_branch

    def from_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] in sequence order -> [N, C] stream rows."""
        flat = x.reshape(self.batch * self.length, x.shape[-1])
        return flat.index_select(0, self.perm) if self.mode == "routed" else flat

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C] stream rows -> [B, L, C] in sequence order."""
        if self.mode == "routed":
            x = x.index_select(0, self.inverse)
        return x.view(self.batch, self.length, x.shape[-1])

    def apply(
        self,
        x: torch.Tensor,
        text_fn: Callable[[torch.Tensor], torch.Tensor],
        vision_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Run a token-wise part: text rows through ``text_fn``, image rows through ``vision_fn``.

        Args:
            x: [N, C] stream rows.
            text_fn: the text weights ([n, C] -> [n, C']).
            vision_fn: the vision copy; the same callable when this part is shared, which then runs once on all rows.

        Returns:
            [N, C'] stream rows.
        """
        if text_fn is vision_fn:
            return text_fn(x)
        if self.mode == "text":
            if not self.every_branch:
                return text_fn(x)
            return torch.cat([text_fn(x), vision_fn(x[:0])])  # [N, C'] and the vision copy's [0, C']
        if self.mode == "dense":
            text, vision = text_fn(x), vision_fn(x)
            w = self.weight.to(text.dtype)
            return text * (1 - w) + vision * w
        if self.n_text == 0 and not self.every_branch:
            return vision_fn(x)
        # [n_text, C'] then [N - n_text, C']; with every_branch either side may have zero rows
        return torch.cat([text_fn(x[: self.n_text]), vision_fn(x[self.n_text :])])
