"""Tiny EVEv2 models and batches (padded and packed rows, several aspect ratios) for the EVEv2 tests."""

from __future__ import annotations

import torch

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.models.evev2 import EveV2VLM, build_evev2_model
from eve_lightning.models.evev2.decoder import vision_text_pairs

CELL = 32  # px per token side
SIDE = 160  # test canvas: 5 x 5 cells
VOCAB = 32000

# (band height, band width) in px on the test canvas, and text tokens of each sample
SQUARE, LANDSCAPE, PORTRAIT = (160, 160), (64, 160), (160, 32)


def tiny_llm_config(**over) -> dict:
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    cfg.update(over)
    return cfg


def perturb_vision(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Make every vision copy differ from its text weights (after the copy step they are equal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, vision, _ in vision_text_pairs(model):
            vision.add_(torch.randn(vision.shape, generator=gen) * scale)


def tiny_vlm(attn: str = "sdpa", routing: str = "routed", seed: int = 0, perturb: bool = True, **eve) -> EveV2VLM:
    """Seeded tiny EVEv2 (3 layers, width 64, GQA 4/2) with vision copies that differ from the text weights."""
    torch.manual_seed(seed)
    cfg = dict(image_size=SIDE, vision_hidden=16, routing=routing)
    cfg.update(eve)
    vlm = build_evev2_model(dict(config=tiny_llm_config(), attn_implementation=attn), cfg).vlm
    if perturb:
        perturb_vision(vlm)
    return vlm


def canvas(band: tuple[int, int] | None, side: int = SIDE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, S, S] random pixels and [S, S] mask with the (height, width) band at the top-left (None: empty)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (3, side, side), generator=gen, dtype=torch.uint8)
    mask = torch.zeros(side, side, dtype=torch.uint8)
    if band is not None:
        mask[: band[0], : band[1]] = 1
    return pixels, mask


def image_tokens(band: tuple[int, int]) -> int:
    """1 + h (w + 1) for a band of whole 32-px cells."""
    h, w = band[0] // CELL, band[1] // CELL
    return 1 + h * (w + 1)


# A sample: (text tokens, index of the placeholder among them or None, band or None).
SAMPLES = [
    (12, None, None),  # text only
    (10, 2, SQUARE),
    (9, 0, LANDSCAPE),  # image first
    (8, 7, PORTRAIT),  # image last
    (7, 3, LANDSCAPE),
]


def sample_tokens(n: int, img_at: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [n] (placeholder at img_at) and labels [n] (the second half of the text supervised)."""
    gen = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(3, VOCAB, (n,), generator=gen)
    labels = torch.full((n,), IGNORE_INDEX)
    labels[n // 2 :] = ids[n // 2 :]
    if img_at is not None:
        ids[img_at] = IMAGE_TOKEN_INDEX
        labels[img_at] = IGNORE_INDEX
    return ids, labels


def padded_batch(samples=SAMPLES, side: int = SIDE) -> dict[str, torch.Tensor]:
    """One sample per row, right padding; text-only rows carry an empty canvas."""
    length = max(n for n, _, _ in samples)
    bsz = len(samples)
    ids = torch.zeros(bsz, length, dtype=torch.long)
    labels = torch.full((bsz, length), IGNORE_INDEX)
    attn = torch.zeros(bsz, length, dtype=torch.bool)
    pix, masks = [], []
    for b, (n, img_at, band) in enumerate(samples):
        ids[b, :n], labels[b, :n] = sample_tokens(n, img_at, b)
        attn[b, :n] = True
        p, m = canvas(band, side, seed=b)
        pix.append(p)
        masks.append(m)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "pixel_values": torch.stack(pix),
        "pixel_mask": torch.stack(masks),
    }


def packed_batch(rows: list[list[int]], samples=SAMPLES, side: int = SIDE, pad: int = 3) -> dict[str, torch.Tensor]:
    """Samples (indices into ``samples``) packed into rows; positions counted in expanded coordinates."""
    length = max(sum(samples[s][0] for s in row) for row in rows) + pad
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    attn = torch.zeros(len(rows), length, dtype=torch.bool)
    pos = torch.zeros(len(rows), length, dtype=torch.long)
    seq = torch.full((len(rows), length), -1, dtype=torch.long)
    pix, masks = [], []
    for r, row in enumerate(rows):
        at = 0
        for k, s in enumerate(row):
            n, img_at, band = samples[s]
            ids[r, at : at + n], labels[r, at : at + n] = sample_tokens(n, img_at, s)
            expanded = torch.arange(n)
            if img_at is not None:
                expanded[img_at + 1 :] += image_tokens(band) - 1
                p, m = canvas(band, side, seed=s)
                pix.append(p)
                masks.append(m)
            pos[r, at : at + n] = expanded
            seq[r, at : at + n] = k
            attn[r, at : at + n] = True
            at += n
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "position_ids": pos,
        "seq_ids": seq,
        "pixel_values": torch.stack(pix),
        "pixel_mask": torch.stack(masks),
    }


def model_inputs_padded_text() -> dict[str, torch.Tensor]:
    """A padded training batch of text-only samples (no placeholder, empty canvases)."""
    batch = padded_batch([(12, None, None), (9, None, None)])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_mask")}
