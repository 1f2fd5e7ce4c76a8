"""The training module takes the decoder's FLOP counts (``utils.flops.decoder_params``) when it builds the model:
after freezing, on whole parameters, also when DeepSpeed ZeRO-3 builds the model already partitioned."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from eve_lightning.lit.eve_module import EveLitModule
from eve_lightning.models.build import build_eve_model
from eve_lightning.models.evev2 import build_evev2_model, is_vision_parameter
from eve_lightning.utils.flops import DecoderParams
from tests.helpers.repo_paths import CONF


def tiny(family: str):
    name = "evev2_tiny.yaml" if family == "evev2" else "tiny.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / name), resolve=True)
    torch.manual_seed(0)
    if family == "evev2":
        return build_evev2_model({"config": cfg["llm"]["config"], "attn_implementation": "sdpa"}, cfg["eve"])
    cfg.pop("_target_")
    return build_eve_model(**cfg)


def built(model, trainable: list[str]) -> EveLitModule:
    module = EveLitModule(lambda: model, {"name": "test", "trainable": trainable}, {"lr": 1e-4}, total_steps=1)
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.configure_model()
    return module


def partitioned(model):
    """The model as DeepSpeed's zero.Init leaves it: every parameter an empty local tensor, its size in ds_numel."""
    for p in model.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    return model


@pytest.mark.parametrize(
    ("family", "trainable"),
    [("eve", ["vlm"]), ("eve", ["vlm.projector", "vlm.llm.model.layers.1"]), ("evev2", ["vlm.llm.*.moe_*"])],
)
def test_the_counts_of_a_zero3_partitioned_model_are_the_whole_models(family, trainable):
    whole = built(tiny(family), trainable).decoder_params
    assert isinstance(whole, DecoderParams) and whole.body > 0
    assert built(partitioned(tiny(family)), trainable).decoder_params == whole


def test_the_counts_follow_the_stage_freezing_and_the_vision_copies():
    model = tiny("evev2")
    counts = built(model, ["vlm.patch_embed", "vlm.llm.*.moe_*"]).decoder_params
    llm = model.vlm.llm
    text = sum(p.numel() for n, p in llm.named_parameters() if not is_vision_parameter(n))
    copies = sum(p.numel() for n, p in llm.named_parameters() if is_vision_parameter(n))
    head = llm.config.vocab_size * llm.config.hidden_size
    assert (counts.trained, counts.frozen, counts.head, counts.head_trained) == (0, text - 2 * head, head, False)
    assert counts.image == (copies, text - 2 * head - copies)  # the final norm has no copy: frozen, text's
