"""Image tokens into the text rows: expand IMAGE_TOKEN_INDEX placeholders, re-lay the rows out, mark the image tokens.

The batch contract is EVE v1's (``eve_lightning.constants``): padded rows (at most one placeholder per row, pixels
indexed by row) or packed rows (``seq_ids`` / ``position_ids``, one canvas per placeholder in row-major order).
Every row is re-laid out with a cumulative sum of the room each token takes (one slot, or the image's token count
at a placeholder), so there is no per-sample loop. Besides the decoder inputs, the result carries the modality mask
that routes tokens to the vision weights: True on every token of an image (class, cell and split tokens alike, as
in the original), False on text and padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.models.attention import Layout, LayoutViews, PackedLayout, PaddedLayout
from eve_lightning.models.patch_embedding import ImageTokens, token_layout


@dataclass
class DecoderInputs(LayoutViews):
    """Decoder inputs after image expansion.

    Attributes:
        inputs_embeds: [B, L', H].
        layout: the rows' attention layout (``models.attention``): ``PaddedLayout`` (one sample per row) or
            ``PackedLayout`` (several); ``layout.decoder_kwargs(backend)`` gives the decoder's mask, positions and
            segment offsets.
        vision_mask: bool [B, L'], True on image tokens.
        labels: [B, L'] or None (IGNORE_INDEX on image tokens and padding).
        image_rows: [N] batch row of each placeholder, in row-major order.
        n_truncated: [B] tokens dropped by the max-length cap.
    """

    inputs_embeds: torch.Tensor
    layout: Layout
    vision_mask: torch.Tensor
    labels: torch.Tensor | None
    image_rows: torch.Tensor
    n_truncated: torch.Tensor


def splice_image_tokens(
    embed: nn.Embedding,
    hidden_size: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image: ImageTokens | None,
    labels: torch.Tensor | None = None,
    max_length: int | None = None,
    pad_side: str = "right",
    position_ids: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> DecoderInputs:
    """Lay text embeddings and image tokens out in expanded rows.

    Args:
        embed: the LLM's input embedding.
        hidden_size: LLM width.
        input_ids: [B, L] token ids with IMAGE_TOKEN_INDEX placeholders.
        attention_mask: [B, L] True/1 on real tokens.
        image: tokens of the images of the placeholders, in row-major placeholder order (None when there is none).
            Tokens of zero images (``EveV2Config.uniform_module_calls``) go through the same scatter, which then
            writes nothing: the embeddings are unchanged, but the patch embedding's output joins the graph.
        labels: [B, L] or None.
        max_length: padded rows: cap after expansion (None: no cap). Packed rows are never cut.
        pad_side: "right" (training) or "left" (batched generation).
        position_ids: packed rows: [B, L] positions in expanded coordinates (the placeholder holds the first image
            token's position).
        seq_ids: packed rows: [B, L] sample index within the row (-1 on padding); selects the packed layout.
        dtype: of the expanded embeddings, the decoder's residual stream (``llm.residual_dtype``); None: the
            embedding weight's.

    Returns:
        DecoderInputs.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    bsz = input_ids.shape[0]
    device = input_ids.device
    packed = seq_ids is not None
    real = attention_mask.bool()
    is_img = (input_ids == IMAGE_TOKEN_INDEX) & real  # [B, L]
    rows, starts = is_img.nonzero(as_tuple=True)  # [N] each
    n_img = 0 if image is None else int(image.lengths.numel())
    if n_img != rows.numel():
        raise ValueError(f"{rows.numel()} image placeholders but {n_img} embedded images")

    room = torch.ones_like(input_ids)  # [B, L] slots each token takes
    if image is not None:
        room[rows, starts] = image.lengths
    room = room * real
    dst = torch.cumsum(room, 1) - room  # [B, L] first slot of each token
    new_len = room.sum(1)  # [B]
    cap = 10**9 if packed or max_length is None else max_length
    out_len = min(int(new_len.max()) if bsz else 0, cap)
    kept = new_len.clamp(max=out_len)  # [B]
    if pad_side == "left":
        dst = dst + (out_len - kept)[:, None]

    text = real & ~is_img & (dst < out_len)  # [B, L]
    t_rows, t_cols = text.nonzero(as_tuple=True)
    t_dst = dst[t_rows, t_cols]
    embeds = embed.weight.new_zeros(bsz, out_len, hidden_size, dtype=dtype)  # [B, L', H]
    embeds = embeds.index_put((t_rows, t_dst), embed(input_ids[t_rows, t_cols]).to(embeds.dtype))
    vision = torch.zeros(bsz, out_len, dtype=torch.bool, device=device)
    new_labels = None
    if labels is not None:
        new_labels = torch.full((bsz, out_len), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[t_rows, t_dst] = labels[t_rows, t_cols]
    new_pos = new_seq = None
    if packed:
        new_pos = torch.zeros(bsz, out_len, dtype=torch.long, device=device)
        new_seq = torch.full((bsz, out_len), -1, dtype=torch.long, device=device)
        new_pos[t_rows, t_dst] = position_ids[t_rows, t_cols]
        new_seq[t_rows, t_dst] = seq_ids[t_rows, t_cols]

    if image is not None:  # also with zero images: every [T] below is then empty
        lay = token_layout(image.grids, image.lengths, image.canvas_grid)
        first = dst[rows, starts]  # [N] slot of each image's first token
        tok_row = rows[lay["image"]]  # [T]
        tok_pos = first[lay["image"]] + lay["offset"]  # [T]
        keep = tok_pos < out_len
        tok_row, tok_pos = tok_row[keep], tok_pos[keep]
        embeds = embeds.index_put((tok_row, tok_pos), image.tokens[keep].to(embeds.dtype))
        vision[tok_row, tok_pos] = True
        if packed:  # image tokens continue the placeholder's position and belong to its sample
            img_of = lay["image"][keep]
            new_pos[tok_row, tok_pos] = position_ids[rows, starts][img_of] + lay["offset"][keep]
            new_seq[tok_row, tok_pos] = seq_ids[rows, starts][img_of]

    slot = torch.arange(out_len, device=device)[None, :]  # [1, L']
    if packed:
        layout: Layout = PackedLayout(seq_ids=new_seq, position_ids=new_pos)
    elif pad_side == "left":
        start = out_len - kept[:, None]
        layout = PaddedLayout(attention_mask=slot >= start, position_ids=(slot - start).clamp(min=0))
    else:
        layout = PaddedLayout(attention_mask=slot < kept[:, None], position_ids=slot.expand(bsz, -1))
    return DecoderInputs(
        inputs_embeds=embeds,
        layout=layout,
        vision_mask=vision,
        labels=new_labels,
        image_rows=rows,
        n_truncated=new_len - kept,
    )
