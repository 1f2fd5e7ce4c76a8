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
    only text weights run; no vision weight is touched, so experts get no gradient at all.
  * ``routed``: the modality order above; each token runs through its own branch only.
  * ``dense``: the original's formulation, kept as a reference for tests and benchmarks: both branches run on every
    token and are blended with the 0/1 mask (about twice the FLOPs of the split parts).
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
    """

    mode: str
    batch: int
    length: int
    n_text: int = 0
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    @classmethod
    def text_only(cls, batch: int, length: int) -> Routing:
        return cls("text", batch, length)

    @classmethod
    def build(cls, vision_mask: torch.Tensor | None, mode: str, batch: int, length: int) -> Routing:
        """The routing of a forward over [B, L] tokens.

        Args:
            vision_mask: bool [B, L], True on image tokens; None = all text.
            mode: "routed" or "dense".
            batch: B.
            length: L.

        Routed mode reads the number of image tokens back from the device (once per forward, not per layer).
        """
        if mode not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
        if vision_mask is None:
            return cls.text_only(batch, length)
        if tuple(vision_mask.shape) != (batch, length):
            raise ValueError(f"vision_mask has shape {tuple(vision_mask.shape)}, expected [B, L] = [{batch}, {length}]")
        flat = vision_mask.reshape(-1).bool()  # [N]
        if mode == "dense":
            return cls("dense", batch, length, weight=flat[:, None].float())
        n_vision = int(flat.sum())
        if n_vision == 0:
            return cls.text_only(batch, length)
        # stable sort of 0/1 keys: text rows first, then image rows, each in sequence order
        perm = torch.sort(flat.to(torch.int32), stable=True).indices  # [N]
        inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
        return cls("routed", batch, length, n_text=perm.numel() - n_vision, perm=perm, inverse=inverse)

    @property
    def uses_vision(self) -> bool:
        """Whether any vision weight runs in this forward."""
        return self.mode != "text"

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
        if self.mode == "text" or text_fn is vision_fn:
            return text_fn(x)
        if self.mode == "dense":
            text, vision = text_fn(x), vision_fn(x)
            w = self.weight.to(text.dtype)
            return text * (1 - w) + vision * w
        if self.n_text == 0:
            return vision_fn(x)
        return torch.cat([text_fn(x[: self.n_text]), vision_fn(x[self.n_text :])])
