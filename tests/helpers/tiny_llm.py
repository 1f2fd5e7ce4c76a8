"""A tiny random LLaMA decoder for tests of decoder-block machinery (compile, checkpointing)."""

from __future__ import annotations

import torch

from eve_lightning.models.llm import build_llm


def tiny_llm(attn: str = "sdpa", layers: int = 3) -> torch.nn.Module:
    """Seeded random LLaMA: vocabulary 128, width 64, ``layers`` blocks, 4 query / 2 KV heads."""
    torch.manual_seed(0)
    shape = dict(
        model_type="llama",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return build_llm(config=shape, attn_implementation=attn)
