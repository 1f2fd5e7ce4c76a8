"""Compiled decoder blocks: same numbers as eager, few recompiles, and generation runs eager with SDPA."""

from __future__ import annotations

import pytest
import torch

from eve_lightning.models.checkpointing import enable_checkpointing
from eve_lightning.models.compile import compile_decoder_layers, decoder_layers, eager_generation, is_checkpointed
from tests.helpers.tiny_llm import tiny_llm


def loss_and_grad(llm, ids):
    llm.zero_grad(set_to_none=True)
    out = llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    return out.loss.detach(), llm.model.layers[1].mlp.up_proj.weight.grad.clone()


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_loss_and_gradients_at_several_lengths():
    torch._dynamo.reset()
    eager, compiled = tiny_llm(), tiny_llm()
    assert compile_decoder_layers(compiled, backend="aot_eager") == 3
    assert all("forward" in layer.__dict__ for layer in decoder_layers(compiled))
    gen = torch.Generator().manual_seed(1)
    for length in (24, 32, 40, 48):  # a new length: first static, then one dynamic-shape variant
        ids = torch.randint(0, 128, (2, length), generator=gen)
        loss_e, grad_e = loss_and_grad(eager, ids)
        loss_c, grad_c = loss_and_grad(compiled, ids)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)
    assert torch._dynamo.config.recompile_limit >= 16


def test_compiling_twice_wraps_each_block_once():
    llm = tiny_llm()
    compile_decoder_layers(llm, backend="aot_eager")
    first = [layer.forward for layer in decoder_layers(llm)]
    compile_decoder_layers(llm, backend="aot_eager")
    assert [layer.forward for layer in decoder_layers(llm)] == first


def test_eager_generation_sets_compiled_blocks_and_flex_attention_aside_and_restores_them():
    llm = tiny_llm("flex_attention")
    compile_decoder_layers(llm, backend="aot_eager")
    compiled = [layer.forward for layer in decoder_layers(llm)]
    with eager_generation(llm):
        assert llm.config._attn_implementation == "sdpa"
        assert not any("forward" in layer.__dict__ for layer in decoder_layers(llm))
        ids = torch.randint(0, 128, (1, 5))
        out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 8)
    assert llm.config._attn_implementation == "flex_attention"
    assert [layer.forward for layer in decoder_layers(llm)] == compiled


def test_a_model_without_decoder_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match="cannot find the decoder blocks of Linear"):
        compile_decoder_layers(torch.nn.Linear(2, 2))


def test_all_blocks_share_two_compiled_graphs_over_many_lengths():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    llm = tiny_llm()
    compile_decoder_layers(llm, backend="aot_eager")
    compiled = []
    for length in (16, 24, 40, 56, 72):
        ids = torch.randint(0, 128, (2, length))
        out = llm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # as in training
        out.logits.sum().backward()
        compiled.append(torch._dynamo.utils.counters["frames"]["ok"])
    # one graph for every block: the first shape statically, then one dynamic-shape graph
    assert compiled == [1, 2, 2, 2, 2]


def saved_tensors(llm, ids) -> int:
    """How many tensors the forward of a step keeps for its backward."""
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, use_cache=False)
    out.loss.backward()
    return count


def test_checkpointed_blocks_recompute_inside_their_graph_with_the_eager_gradients():
    torch._dynamo.reset()
    eager, compiled, plain = tiny_llm(), tiny_llm(), tiny_llm()
    for llm in (eager, compiled):
        enable_checkpointing(llm)
    compile_decoder_layers(compiled, backend="aot_eager")
    compile_decoder_layers(plain, backend="aot_eager")
    blocks = decoder_layers(compiled)
    # the checkpoint moved inside the compiled forward: the block's own flag is off, so it is not applied twice
    assert all(is_checkpointed(b) and b.checkpointed_in_graph and not b.gradient_checkpointing for b in blocks)
    assert not any(map(is_checkpointed, decoder_layers(plain)))
    gen = torch.Generator().manual_seed(2)
    for length in (24, 40, 56, 24):
        ids = torch.randint(0, 128, (2, length), generator=gen)
        loss_e, grad_e = loss_and_grad(eager, ids)
        loss_c, grad_c = loss_and_grad(compiled, ids)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)
    ids = torch.randint(0, 128, (2, 40), generator=gen)
    assert saved_tensors(compiled, ids) < saved_tensors(plain, ids) / 2  # activations recomputed, not kept


def test_checkpointing_again_after_compiling_keeps_each_block_checkpointed_once():
    """A second path (the bench's FP8 one) turns checkpointing on again over blocks compiled with it inside."""
    llm = tiny_llm()
    enable_checkpointing(llm)
    compile_decoder_layers(llm, backend="aot_eager")
    assert enable_checkpointing(llm) == 3
    blocks = decoder_layers(llm)
    assert all(b.checkpointed_in_graph and not b.gradient_checkpointing for b in blocks)  # not twice
    with pytest.raises(ValueError, match=r"layers=1: decoder block 1 is compiled with its checkpoint inside"):
        enable_checkpointing(llm, layers=1)  # fewer blocks cannot be had any more: said, not ignored


def test_checkpointing_blocks_compiled_without_it_is_refused():
    llm = tiny_llm()
    compile_decoder_layers(llm, backend="aot_eager")
    with pytest.raises(ValueError, match=r"block 0 is compiled already without checkpointing.*before compiling"):
        enable_checkpointing(llm, layers=2)
    assert enable_checkpointing(llm, layers=0) == 0  # no block asked for: nothing to refuse


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "reduce-overhead"}, "compile mode 'reduce-overhead' is not supported"),
        ({"recompile_limit": 0}, "at least 1"),
    ],
)
def test_cuda_graph_modes_and_a_zero_limit_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compile_decoder_layers(tiny_llm(), backend="aot_eager", **kwargs)


def test_eager_generation_restores_after_an_error():
    llm = tiny_llm("flex_attention")
    compile_decoder_layers(llm, backend="aot_eager")
    with pytest.raises(RuntimeError, match="boom"), eager_generation(llm):
        raise RuntimeError("boom")
    assert llm.config._attn_implementation == "flex_attention"
    assert all("forward" in layer.__dict__ for layer in decoder_layers(llm))
