"""Parameter counts of a stage's model, built on the meta device from its config (nothing is loaded).

The decoder and teacher shapes come from the config, from the checkpoint folder's ``config.json``, or, when that
folder is not here, from the published Vicuna-7B / CLIP ViT-L/14-336 shapes (noted in the plan). EVEv2 models
(``model._target_`` of the evev2 family) have no teacher; their published decoder is Qwen2.5-7B-Instruct, and
their decoder FLOPs count one branch per token (the routed count: vision copies not added). The decoder FLOPs take
the split of ``utils.flops.decoder_params`` (``decoder_params``: trained and frozen parameters of each branch, the
LM head apart, taken only at the supervised positions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from eve_lightning.lit.freezing import apply_freezing
from eve_lightning.models import attention
from eve_lightning.models.build import build_eve_model
from eve_lightning.models.evev2 import build_evev2_model, is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.shapes import CLIP_L14_336, QWEN25_7B, VICUNA_7B
from eve_lightning.planner.memory import DecoderShape
from eve_lightning.utils.config_checks import model_family
from eve_lightning.utils.flops import decoder_params


def architecture(model_cfg: DictConfig, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """HF config kwargs of the decoder and the teacher: from the config, the checkpoint folder, or published.

    EVEv2 has no teacher: its teacher shape is ``{}``.
    """
    shapes = []
    parts = [("llm", VICUNA_7B, "Vicuna-7B"), ("teacher", CLIP_L14_336, "CLIP ViT-L/14-336")]
    if model_family(model_cfg.get("_target_")) == "evev2":
        parts = [("llm", QWEN25_7B, "Qwen2.5-7B-Instruct")]
    for part, published, label in parts:
        node = model_cfg.get(part) or {}
        if node.get("config"):
            shapes.append(OmegaConf.to_container(node.config, resolve=True))
            continue
        path = Path(str(node.get("path"))) / "config.json"
        if path.is_file():
            data = json.loads(path.read_text())
            shapes.append(data.get("vision_config", data) if part == "teacher" else data)
            continue
        notes.append(f"{part}: {node.get('path')} is not here; using the published {label} shape")
        shapes.append(dict(published))
    return shapes[0], (shapes[1] if len(shapes) > 1 else {})


def count_parameters(cfg: DictConfig, notes: list[str]) -> dict[str, Any]:
    """Trained / frozen parameter counts of the stage (model built on the meta device)."""
    llm_shape, teacher_shape = architecture(cfg.model, notes)
    eve = OmegaConf.to_container(cfg.model.eve, resolve=True)
    v2 = model_family(cfg.model.get("_target_")) == "evev2"
    with torch.device("meta"):
        if v2:
            model = build_evev2_model(llm={"config": llm_shape, "attn_implementation": attention.SDPA}, eve=eve)
        else:
            model = build_eve_model(
                llm={"config": llm_shape, "attn_implementation": attention.SDPA},
                eve=eve,
                teacher={"config": teacher_shape, "select_layer": -2},
            )
    apply_freezing(model, list(cfg.stage.trainable))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    llm = model.vlm.llm
    frozen_llm = sum(p.numel() for p in llm.parameters() if not p.requires_grad)
    teacher = sum(p.numel() for p in model.teacher.parameters()) if model.teacher is not None else 0
    # routed (EVEv2): a token runs one branch, image tokens the vision copies where the decoder has them
    copies = [(v, t) for _, v, t in vision_text_pairs(llm)] if v2 else []
    flops_params = decoder_params(llm, vision_copies=copies)
    # EVE v1: the decoder trains when any of its weights does (a partly frozen one still computes weight gradients)
    text_trained = vision_trained = any(p.requires_grad for p in llm.parameters())
    if v2:
        named = list(llm.named_parameters())
        text_trained = any(p.requires_grad for n, p in named if not is_vision_parameter(n))
        vision = [p.requires_grad for n, p in named if is_vision_parameter(n)]
        vision_trained = any(vision) if vision else text_trained  # no copies: image tokens run the text weights
    return {
        "family": "evev2" if v2 else "eve",
        "text_trained": text_trained,  # the decoder weights text tokens run get gradients
        "vision_trained": vision_trained,  # the decoder weights image tokens run get gradients
        "trained": trained,
        "frozen_llm": frozen_llm,
        "teacher": teacher,
        "decoder": sum(p.numel() for p in llm.parameters()),
        "decoder_params": flops_params,  # the split the decoder FLOPs take (utils.flops.decoder_params)
        "decoder_no_embed": flops_params.body + flops_params.head,  # the LM head included (one branch for EVEv2)
        "lm_head": flops_params.head,  # the decoder FLOPs count it at the supervised positions only
        "layer": sum(p.numel() for p in llm.model.layers[0].parameters()),  # EVEv2: with its vision copies
        "shape": DecoderShape.from_hf(llm.config),
        "align_layers": len(model.vlm.aligner.layer_indices) if model.vlm.aligner is not None else 0,
    }


def dtype_bytes(name: Any) -> int:
    """Bytes per element of a configured dtype name: 2 for bf16 / fp16, 4 otherwise (float32, unset)."""
    return 2 if str(name) in ("bfloat16", "float16", "bf16", "fp16") else 4
