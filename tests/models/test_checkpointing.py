"""Selective activation checkpointing: exactly the first N blocks recompute, and the numbers do not change."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.models.checkpointing import enable_checkpointing
from eve_lightning.models.compile import decoder_layers
from tests.helpers.tiny_llm import tiny_llm

LAYERS = 4


def step(layers: int | str | None):
    """Loss, one gradient and the query-projection calls per block of a training step with the given checkpointing."""
    llm = tiny_llm(layers=LAYERS)
    llm.train()
    if layers != "off":
        enable_checkpointing(llm, layers)
    calls = [0] * LAYERS
    for i, block in enumerate(decoder_layers(llm)):
        # a pre-hook early in the block: non-reentrant recomputation stops once the saved tensors are rebuilt
        block.self_attn.q_proj.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    loss = llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    return loss.detach(), llm.model.layers[0].self_attn.q_proj.weight.grad, calls


def test_only_the_first_n_blocks_run_their_forward_again_and_the_numbers_stay():
    loss0, grad0, calls0 = step("off")
    assert calls0 == [1, 1, 1, 1]
    for layers, expected in ((None, [2, 2, 2, 2]), (2, [2, 2, 1, 1]), (0, [1, 1, 1, 1])):
        loss, grad, calls = step(layers)
        assert calls == expected, layers
        torch.testing.assert_close(loss, loss0, rtol=0, atol=0)
        torch.testing.assert_close(grad, grad0, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layers", [-1, 5])
def test_more_blocks_than_the_decoder_has_is_refused_naming_the_range(layers):
    llm = tiny_llm(layers=LAYERS)
    with pytest.raises(ValueError, match=r"gradient_checkpointing_layers=.*the decoder has 4 blocks; use 0-4 or null"):
        enable_checkpointing(llm, layers)


def test_checkpointed_blocks_can_also_be_compiled():
    from eve_lightning.models.compile import compile_decoder_layers

    loss0, grad0, _ = step(2)
    llm = tiny_llm(layers=LAYERS)
    llm.train()
    enable_checkpointing(llm, 2)
    compile_decoder_layers(llm, backend="aot_eager")
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    loss = llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), loss0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(llm.model.layers[0].self_attn.q_proj.weight.grad, grad0, rtol=1e-5, atol=1e-7)
