"""Parameter counts of a stage's model, built on the meta device from its config (nothing is loaded).

The decoder and teacher shapes come from the config, from the checkpoint folder's ``config.json``, or, when that
folder is not here, from the published Vicuna-7B / CLIP ViT-L/14-336 shapes (noted in the plan).
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
from eve_lightning.models.shapes import CLIP_L14_336, VICUNA_7B
from eve_lightning.planner.memory import DecoderShape


def architecture(model_cfg: DictConfig, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """HF config kwargs of the decoder and the teacher: from the config, the checkpoint folder, or published."""
    shapes = []
    for part, published, label in (("llm", VICUNA_7B, "Vicuna-7B"), ("teacher", CLIP_L14_336, "CLIP ViT-L/14-336")):
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
    return shapes[0], shapes[1]


def count_parameters(cfg: DictConfig, notes: list[str]) -> dict[str, Any]:
    """Trained / frozen parameter counts of the stage (model built on the meta device)."""
    llm_shape, teacher_shape = architecture(cfg.model, notes)
    eve = OmegaConf.to_container(cfg.model.eve, resolve=True)
    with torch.device("meta"):
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
    embed = llm.get_input_embeddings().weight.numel()
    return {
        "trained": trained,
        "frozen_llm": frozen_llm,
        "teacher": teacher,
        "decoder": sum(p.numel() for p in llm.parameters()),
        "decoder_no_embed": sum(p.numel() for p in llm.parameters()) - embed,
        "layer": sum(p.numel() for p in llm.model.layers[0].parameters()),
        "shape": DecoderShape.from_hf(llm.config),
        "align_layers": len(model.vlm.aligner.layer_indices) if model.vlm.aligner is not None else 0,
    }


def dtype_bytes(name: Any) -> int:
    """Bytes per element of a configured dtype name: 2 for bf16 / fp16, 4 otherwise (float32, unset)."""
    return 2 if str(name) in ("bfloat16", "float16", "bf16", "fp16") else 4
