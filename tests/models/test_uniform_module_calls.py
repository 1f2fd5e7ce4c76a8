"""``uniform_module_calls``: a loss forward without an image calls every module an image batch calls, in the same order.

Under DeepSpeed ZeRO-3 calling a module gathers its parameters with a collective of all ranks, so a rank whose
micro-batch holds no image must still call the vision modules the other ranks call (the 2-rank step is
tests/training/test_zero3_imageless_rank.py). The option must change no loss and no gradient, must leave text-only
batches alone when off, and must leave generation alone when on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.inference.generate import GenerationConfig, generate_tokens
from eve_lightning.models.evev2.routing import Routing
from eve_lightning.models.losses import causal_lm_loss, lm_head_calls
from tests.helpers.views import make_batch
from tests.models.evev2.helpers import model_inputs_padded_text, packed_batch, padded_batch, tiny_vlm


@contextmanager
def module_calls(model: nn.Module) -> Iterator[list[str]]:
    """Names of ``model``'s modules in the order their forward is called (forward pre-hooks), while in the block."""
    calls: list[str] = []

    def hook(name: str) -> Callable:
        return lambda _module, _args: calls.append(name)

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in model.named_modules()]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def loss_and_grads(model: nn.Module, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = forward()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def assert_same_loss_and_grads(model: nn.Module, option: Callable[[bool], None], forward) -> dict:
    """Loss and every gradient bit-equal with the option off and on; returns the gradients with it on."""
    option(False)
    loss_off, grads_off = loss_and_grads(model, forward)
    option(True)
    loss_on, grads_on = loss_and_grads(model, forward)
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert grad is not None and grads_on[name] is not None, name  # DDP: every parameter has a gradient
        assert torch.equal(grads_on[name], grad), name
    return grads_on


# ---------------------------------------------------------------------------------------------------------- EVEv2


@pytest.mark.parametrize("n_image", [0, 3, 8])
def test_every_branch_calls_text_then_vision_whatever_the_tokens_and_changes_no_value(n_image):
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask.view(-1)[8 - n_image :] = True
    x = torch.randn(2, 4, 3)
    calls: list[tuple[str, int]] = []

    def text(rows: torch.Tensor) -> torch.Tensor:
        calls.append(("text", rows.shape[0]))
        return rows * 2

    def vision(rows: torch.Tensor) -> torch.Tensor:
        calls.append(("vision", rows.shape[0]))
        return rows * 3

    outs = []
    for every in (False, True):
        calls.clear()
        r = Routing.build(mask, "routed", 2, 4, every_branch=every)
        outs.append(r.to_sequence(r.apply(r.from_sequence(x), text, vision)))
    assert calls == [("text", 8 - n_image), ("vision", n_image)]  # both, in this order, even with zero rows
    assert torch.equal(outs[1], outs[0])


def is_v2_vision(name: str) -> bool:
    return name.startswith("patch_embed") or any(part.startswith("moe_") for part in name.split("."))


def packed_text_inputs() -> dict[str, torch.Tensor]:
    """The text-only rows of ``model_inputs_padded_text`` as packed rows of one sample each, without pixels."""
    batch = model_inputs_padded_text()
    real = batch["attention_mask"]
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": real,
        "labels": batch["labels"],
        "position_ids": torch.cumsum(real, 1) - 1,
        "seq_ids": torch.where(real, 0, -1),
    }


V2_BATCHES = {  # (image batch, text-only batch) of one layout
    "padded": (padded_batch, model_inputs_padded_text),
    "packed": (lambda: packed_batch([[1, 0], [2, 3, 4]]), packed_text_inputs),
}


@pytest.mark.parametrize("routing", ["routed", "dense"])
@pytest.mark.parametrize("layout", sorted(V2_BATCHES))
def test_evev2_text_only_batch_calls_every_module_of_an_image_batch_in_its_order(layout, routing):
    vlm = tiny_vlm(routing=routing, uniform_module_calls=True)
    images, text = (make() for make in V2_BATCHES[layout])
    with module_calls(vlm) as image_calls:
        vlm(**images)
    with module_calls(vlm) as text_calls:
        vlm(**text)
    vision = [n for n in image_calls if is_v2_vision(n)]
    assert "patch_embed.patch_embedding.0" in vision and "llm.model.layers.2.moe_mlp.down_proj" in vision
    assert text_calls == image_calls  # every module, vision and text alike, in the same order


@pytest.mark.parametrize("routing", ["routed", "dense"])
@pytest.mark.parametrize("which", ["padded text", "packed text", "padded images", "packed images"])
def test_evev2_option_changes_no_loss_and_no_gradient(which, routing):
    layout, kind = which.split()
    batch = V2_BATCHES[layout][0 if kind == "images" else 1]()
    vlm = tiny_vlm(routing=routing)

    def option(on: bool) -> None:
        vlm.config.uniform_module_calls = on

    grads = assert_same_loss_and_grads(vlm, option, lambda: vlm(**batch).loss)
    if kind == "text":  # the empty vision calls give exact zeros
        vision = [g for n, g in grads.items() if is_v2_vision(n)]
        assert vision and all(torch.count_nonzero(g) == 0 for g in vision)


def test_evev2_without_the_option_a_text_only_batch_calls_no_vision_module():
    vlm = tiny_vlm()  # routed, the option at its default
    assert vlm.config.uniform_module_calls is False
    with module_calls(vlm) as calls:
        out = vlm(**model_inputs_padded_text())
    assert calls and not [n for n in calls if is_v2_vision(n)]
    out.loss.backward()  # the zero-valued term still gives every vision parameter a (zero) gradient for DDP
    assert all(p.grad is not None for n, p in vlm.named_parameters() if is_v2_vision(n))


def test_evev2_generation_of_a_text_prompt_calls_no_vision_module_with_the_option():
    vlm = tiny_vlm(uniform_module_calls=True).eval()
    batch = model_inputs_padded_text()
    cfg = GenerationConfig(max_new_tokens=3)
    with module_calls(vlm) as calls:
        steps = list(generate_tokens(vlm, batch["input_ids"], batch["attention_mask"], None, None, None, cfg, 2048))
    assert len(steps) == 3 and calls and not [n for n in calls if is_v2_vision(n)]


# ---------------------------------------------------------------------------------------------------------- EVE v1

V1_VISION = ("patch_embed", "projector", "aligner")


def is_v1_vision(name: str) -> bool:
    """A module of the image path, named from the VLM (``patch_embed...``) or from the model (``vlm.patch_embed...``,
    and the teacher)."""
    parts = name.split(".")
    return (
        parts[0] == "teacher" or parts[0] in V1_VISION or (parts[0] == "vlm" and parts[1:2] and parts[1] in V1_VISION)
    )


@pytest.fixture(scope="module")
def v1_model():
    """conf/model/tiny.yaml: PEL, projector, aligner and CLIP teacher (float32, random weights)."""
    from omegaconf import OmegaConf

    from tests.helpers.repo_paths import CONF

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    torch.manual_seed(0)
    return instantiate(copy.deepcopy(cfg), _convert_="all").float()


@pytest.fixture(scope="module")
def v1_batches() -> dict[str, dict]:
    images = make_batch(672)  # three image rows and a text-only row, with teacher views
    text = {k: v.clone() for k, v in images.items()}
    text["input_ids"][text["input_ids"] == IMAGE_TOKEN_INDEX] = 5
    real = text["attention_mask"]
    packed_text = {  # the text rows as packed rows of one sample each, without pixels
        "input_ids": text["input_ids"],
        "attention_mask": real,
        "labels": text["labels"],
        "position_ids": torch.cumsum(real, 1) - 1,
        "seq_ids": torch.where(real, 0, -1),
    }
    return {"images": images, "text": text, "packed text": packed_text}


@pytest.fixture
def v1_option(v1_model):
    def option(on: bool) -> None:
        v1_model.vlm.config.uniform_module_calls = on

    yield option
    option(False)


@pytest.mark.parametrize("text", ["text", "packed text"])
def test_v1_text_only_batch_calls_every_module_of_an_image_batch_in_its_order(v1_model, v1_batches, v1_option, text):
    v1_option(True)
    with module_calls(v1_model) as image_calls:
        out = v1_model(v1_batches["images"])
    assert out.n_align_images == 3  # the image batch aligns: the aligner runs on real cells
    with module_calls(v1_model) as text_calls:
        out = v1_model(v1_batches[text])
    assert out.n_align_images == 0 and out.stats["n_images"] == 0
    parts = {n.split(".")[1] if n.startswith("vlm.") else n.split(".")[0] for n in image_calls if is_v1_vision(n)}
    assert parts == {*V1_VISION, "teacher"}  # the teacher too: it runs on one blank view when no image has one
    assert text_calls == image_calls


@pytest.mark.parametrize("which", ["text", "packed text", "images", "images without teacher features"])
def test_v1_option_changes_no_loss_and_no_gradient(v1_model, v1_batches, v1_option, which):
    batch = v1_batches["images" if which.startswith("images") else which]
    if which == "images without teacher features":  # the aligner has nothing to align, the option runs it on none

        def forward():
            keys = ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_mask")
            return v1_model.vlm(**{k: batch[k] for k in keys}).loss

    else:

        def forward():
            return v1_model(batch).loss

    grads = assert_same_loss_and_grads(v1_model, v1_option, forward)
    zero = ["aligner"] if which != "images" else []
    zero += ["patch_embed", "projector"] if which.endswith("text") else []
    for name, grad in grads.items():
        if name.startswith("vlm.") and name.split(".")[1] in zero:
            assert torch.count_nonzero(grad) == 0, name


def test_v1_without_the_option_a_text_only_batch_calls_no_vision_module(v1_model, v1_batches):
    assert v1_model.vlm.config.uniform_module_calls is False
    with module_calls(v1_model) as calls:
        v1_model(v1_batches["text"])
    assert calls and not [n for n in calls if is_v1_vision(n)]


# ---------------------------------------------------------------------------------------------------------- LM head


@pytest.mark.parametrize(("supervised", "calls"), [(0, 1), (3, 1), (4, 1), (5, 2), (9, 3)])
def test_the_lm_head_runs_at_least_once_and_gives_the_same_loss_with_uniform_calls(supervised, calls):
    # without a process group every rank is this one: ceil(supervised / chunk) calls, at least one (on zero rows)
    torch.manual_seed(0)
    head = nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    targets = torch.full((10,), IGNORE_INDEX)  # the 2 x 5 positions after the first of each row (labels shift)
    targets[torch.randperm(10)[:supervised]] = torch.randint(0, 11, (supervised,))
    labels = torch.cat([torch.full((2, 1), IGNORE_INDEX), targets.view(2, 5)], dim=1)  # [2, 6]
    want, n_want = causal_lm_loss(hidden, labels, head, chunk_size=4)
    with module_calls(head) as seen:
        calls_here = lm_head_calls(n_want, hidden.device, chunk_size=4)
        got, n_got = causal_lm_loss(hidden, labels, head, chunk_size=4, calls=calls_here)
    assert len(seen) == calls and n_got == n_want
    assert torch.equal(got, want)
    got.backward()
    assert hidden.grad is not None and (supervised > 0) == bool(hidden.grad.abs().sum() > 0)
