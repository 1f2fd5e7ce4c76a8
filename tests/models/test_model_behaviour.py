"""Behaviour that training relies on: frozen teacher, lean logits, no NaN on unsupervised batches,
text-only batches, truncation accounting and activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.helpers.views import make_batch


@pytest.fixture
def model(tiny_model_cfg):
    torch.manual_seed(0)
    return instantiate(copy.deepcopy(tiny_model_cfg), _convert_="all").float()


def test_teacher_stays_frozen_and_in_eval_mode(model):
    model.train()
    assert model.vlm.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    out = model(make_batch(672))
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert out.n_align_images == 3 and out.loss_align > 0


def test_logits_are_computed_only_at_supervised_positions(model):
    batch = make_batch(672)
    seen = []
    model.vlm.llm.get_output_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    model(batch)
    n_supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert seen == [n_supervised]  # one chunk, only supervised rows; no logits at the 1,100+ image tokens


def test_batch_without_supervised_tokens_gives_zero_not_nan(model):
    batch = make_batch(672)
    batch["labels"].fill_(IGNORE_INDEX)
    out = model(batch)
    assert out.n_ce_tokens == 0 and out.loss_ce == 0
    assert torch.isfinite(out.loss)
    out.loss.backward()  # graph intact


def test_text_only_batch_touches_vision_parameters_with_zero_gradient(model):
    batch = make_batch(672)
    batch["input_ids"][batch["input_ids"] == IMAGE_TOKEN_INDEX] = 5
    out = model(batch)
    assert out.n_align_images == 0 and out.stats["n_images"] == 0
    out.loss.backward()
    for name in ("patch_embed", "projector", "aligner"):
        grads = [p.grad for p in getattr(model.vlm, name).parameters()]
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads), name


def test_truncation_happens_after_image_expansion_and_is_counted(tiny_model_cfg):
    cfg = copy.deepcopy(tiny_model_cfg)
    cfg["eve"]["max_length"] = 320
    torch.manual_seed(0)
    m = instantiate(cfg, _convert_="all").float()
    batch = make_batch(672)
    mm = m.vlm.prepare_inputs(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"], batch["labels"]
    )
    assert mm.inputs_embeds.shape[1] == 320
    # row 0: 30 text tokens, image (1 + 12 * 25 = 301 tokens) replaces one -> 330 -> 10 cut
    # row 3: 25 text tokens, square image (601) at position 24 -> 625 -> 305 cut; image incomplete
    expected = torch.tensor([10, 17 - 1 + 241 - 320, 40 - 320, 625 - 320]).clamp(min=0)
    assert mm.n_truncated.tolist() == expected.tolist()
    assert mm.attention_mask.sum(1).tolist() == [320, 257, 40, 320]
    # only the rows whose whole image fits are aligned (rows 0 and 1)
    assert sorted(set(mm.cell_rows.tolist())) == [0, 1]


def test_activation_checkpointing_gives_the_same_losses_and_grads(model):
    batch = make_batch(672)
    model.train()
    ref = model(batch)
    ref.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.vlm.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    out = model(batch)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss)
    for n, g in ref_grads.items():
        torch.testing.assert_close(model.vlm.get_parameter(n).grad, g, msg=n)


def test_prepare_inputs_gives_a_padded_layout_per_pad_side_and_a_packed_layout_for_packed_rows(model):
    from dataclasses import FrozenInstanceError

    import numpy as np

    from eve_lightning.bench.train import draw_samples, packed_batch
    from eve_lightning.models.attention import PackedLayout, PaddedLayout

    batch = make_batch(672)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
    right = model.vlm.prepare_inputs(*args)
    left = model.vlm.prepare_inputs(*args, pad_side="left")
    for mm in (right, left):
        assert isinstance(mm.layout, PaddedLayout) and mm.seq_ids is None
        assert mm.attention_mask is mm.layout.attention_mask and mm.position_ids is mm.layout.position_ids
        n = mm.attention_mask.sum(1)
        for r in range(4):  # positions count the real tokens from 0, whichever side the padding is on
            assert mm.position_ids[r][mm.attention_mask[r]].tolist() == list(range(int(n[r])))
    assert torch.equal(right.attention_mask.sum(1), left.attention_mask.sum(1))
    assert bool(left.attention_mask[:, -1].all()) and bool(right.attention_mask[:, 0].all())
    with pytest.raises(FrozenInstanceError):
        right.layout.attention_mask = left.attention_mask

    packed = packed_batch(draw_samples("pretrain", 3, np.random.default_rng(0)), 4096)
    mm = model.vlm.prepare_inputs(
        packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["pixel_mask"],
        position_ids=packed["position_ids"], seq_ids=packed["seq_ids"],
    )  # fmt: skip
    assert isinstance(mm.layout, PackedLayout) and mm.seq_ids is mm.layout.seq_ids
    assert torch.equal(mm.attention_mask, mm.seq_ids >= 0)
    assert mm.seq_ids.shape[0] == 1 and set(mm.seq_ids[mm.attention_mask].tolist()) == {0, 1, 2}  # one row of 3


@pytest.mark.parametrize("backend", ["eager", "torch_varlen"])
def test_packed_rows_give_the_sdpa_loss_under_other_backends(model, backend):
    import numpy as np

    from eve_lightning.bench.train import draw_samples, packed_batch
    from eve_lightning.models import attention

    batch = packed_batch(draw_samples("pretrain", 3, np.random.default_rng(0)), 4096)
    with torch.no_grad():
        want = model(batch).loss
        attention.set_backend(model.vlm.llm, backend)
        got = model(batch).loss
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
