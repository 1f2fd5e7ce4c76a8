"""Tiny EVEv2 models, and official EVEv2 checkpoint folders written from them independently of the importer's rules."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from eve_lightning.data.tokenizer import default_tokenizer_path
from eve_lightning.models.evev2 import EveV2VLM
from eve_lightning.models.evev2.decoder import vision_text_pairs
from tests.helpers.repo_paths import CONF


def tiny_evev2(seed: int = 0, **eve) -> EveV2VLM:
    """conf/model/evev2_tiny.yaml with random weights, vision copies moved away from their text weights."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "evev2_tiny.yaml"), resolve=True)
    cfg["eve"].update(eve)
    torch.manual_seed(seed)
    vlm = instantiate(copy.deepcopy(cfg), _convert_="all").vlm.eval()
    with torch.no_grad():  # experts that differ from their text weights, as after training
        for _, vision, _ in vision_text_pairs(vlm):
            vision.add_(torch.randn_like(vision) * 0.05)
    return vlm


def official_v2_layout(vlm: EveV2VLM, old_names: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights under the original EVEv2 key names (``EVEQwen2ForCausalLM.state_dict()``).

    ``old_names``: the class and split tokens under the names of earlier commits (``start_embedding``,
    ``end_embedding``).
    """
    out = dict(vlm.llm.state_dict())  # model.layers.N.{self_attn.moe_q_proj, moe_mlp, ...}, lm_head.weight
    seq = vlm.patch_embed.patch_embedding
    tower = "model.vision_tower."
    for i in (0, 2):
        out[f"{tower}patch_embedding.{i}.weight"] = seq[i].weight
        out[f"{tower}patch_embedding.{i}.bias"] = seq[i].bias
    cls_name, split_name = ("start_embedding", "end_embedding") if old_names else ("class_embedding", "split_embedding")
    out[tower + cls_name] = vlm.patch_embed.class_embedding
    out[tower + split_name] = vlm.patch_embed.split_embedding
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # a buffer older transformers saved
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def official_v2_config(vlm: EveV2VLM, tower: str = "openai/eve-anyratio-res800-patch16") -> dict:
    """config.json of the original for this model: its Qwen2 config plus the EVE keys of EVE-7B-HD-v2.0."""
    config = vlm.llm.config.to_dict()
    for key in ("moe_parts", "routing", "_attn_implementation_autoset", "layer_types", "id2label", "label2id"):
        config.pop(key, None)
    # the released config.json was written by transformers 4.x: rope_theta and torch_dtype at the top level
    config["rope_theta"] = config.pop("rope_parameters", {}).get("rope_theta", 10000.0)
    config["torch_dtype"] = config.pop("dtype", "float32")
    config |= {
        "architectures": ["EVEQwen2ForCausalLM"],
        "model_type": "eve-qwen2",
        "mm_vision_tower": tower,
        "mm_hidden_size": vlm.config.vision_hidden,
        "add_moe": bool(vlm.config.moe_parts),
        "moe_part": "-".join(vlm.config.moe_parts) or None,
        "tokenizer_model_max_length": vlm.config.max_length,
        "tune_LLM": True,
        "tune_VE": True,
        "version": "qwen2",
    }
    return config


def write_official_v2(
    vlm: EveV2VLM,
    folder: Path,
    old_names: bool = False,
    preprocessor: dict | None = None,
    tower: str = "openai/eve-anyratio-res800-patch16",
) -> Path:
    """An official EVEv2 folder: config.json, two safetensors shards with their index, the tokenizer."""
    folder.mkdir(parents=True)
    state = official_v2_layout(vlm, old_names)
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(official_v2_config(vlm, tower), indent=2))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    shutil.copy(default_tokenizer_path(), folder / "tokenizer.model")
    return folder
