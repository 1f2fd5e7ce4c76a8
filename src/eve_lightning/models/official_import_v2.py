"""Import of the official EVEv2 checkpoint layout (BAAI/EVE-7B-HD-v2.0) into ``EveV2VLM``.

The official folder is a Hugging Face folder: ``config.json`` (a Qwen2 config plus the EVE keys ``mm_vision_tower``,
``mm_hidden_size``, ``add_moe``, ``moe_part``, ``tokenizer_model_max_length``), safetensors or pickle shards, and
the Qwen2.5 tokenizer. Its keys (see ``eve_lightning.models.evev2`` for the table) are ours under ``vlm.`` except
for the vision tower, which moves from ``model.vision_tower.`` to ``patch_embed.``; the decoder's vision copies
(``moe_*``) already carry our names.

Everything the model needs comes from the folder itself, never from a side folder (the original loader read the
preprocessing facts from ``openai/eve-anyratio-res1600-patch16``): ``max_size``, ``patch_stride``,
``dense_stride`` and the normalisation from the folder's ``preprocessor_config.json`` when it has one, else from
the name of ``mm_vision_tower`` in ``config.json`` (``...-res1600-patch16``), else from the defaults of the
released model; ``PreprocessFacts.source`` says which.

Earlier commits of the original named the class token ``start_embedding`` and the split token ``end_embedding``;
both names are mapped onto ours (and counted as renamed in the report), never reported as unused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen2Config

from eve_lightning.constants import CLIP_MEAN, CLIP_STD
from eve_lightning.models.evev2.decoder import MOE_PARTS
from eve_lightning.models.official_import import ImportReport, read_state_dict

PREPROCESSOR_NAME = "preprocessor_config.json"
DEFAULT_MAX_SIZE = 1600  # EVE-7B-HD-v2.0 (stages 1.1 to SFT); stages 0 and 1.0 used 800
DEFAULT_PATCH = 16
DEFAULT_MERGE = 2

# (pattern, replacement) on official keys -> keys of EveV2VLM; first match wins.
V2_KEY_RULES: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.patch_embedding\.([02])\.(weight|bias)$", r"patch_embed.patch_embedding.\1.\2"),
    (r"^model\.vision_tower\.class_embedding$", "patch_embed.class_embedding"),
    (r"^model\.vision_tower\.split_embedding$", "patch_embed.split_embedding"),
    (r"^(model\.|lm_head\.)", r"llm.\1"),
]
# Names of earlier commits of the original -> the current name (issue #18 of the original).
OLD_NAMES: dict[str, str] = {
    "model.vision_tower.start_embedding": "model.vision_tower.class_embedding",
    "model.vision_tower.end_embedding": "model.vision_tower.split_embedding",
}
DROP_PATTERNS = [r"rotary_emb\.inv_freq$"]  # RoPE buffers of older transformers: recomputed, not weights
# Config keys of the original that are not Qwen2 settings: the EVE keys, and training bookkeeping.
_LEGACY_QWEN2_KEYS = {"rope_theta", "rope_scaling"}  # read by Qwen2Config, but not in its to_dict() any more
_BOOKKEEPING = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "model_type"}


def is_official_v2_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is the original EVEv2's.

    True for ``model_type`` ``eve-qwen2``, or for the EVE keys (``mm_vision_tower``, ``mm_hidden_size``) together
    with a Qwen2 model type or the ``add_moe`` / ``moe_part`` settings.
    """
    model_type = str(config.get("model_type", "")).replace("_", "-")
    if model_type == "eve-qwen2":
        return True
    has_eve_keys = "mm_vision_tower" in config or "mm_hidden_size" in config
    return has_eve_keys and ("qwen2" in model_type or "add_moe" in config or "moe_part" in config)


@dataclass(frozen=True)
class PreprocessFacts:
    """How the original preprocessed images, and where we read it.

    Attributes:
        max_size: the resize rule's side (area about ``max_size ** 2``).
        patch_size: first convolution's patch (``patch_stride``).
        merge_size: second convolution's window (``dense_stride``).
        source: where the facts came from (a file, the tower's name, or the defaults).
    """

    max_size: int
    patch_size: int
    merge_size: int
    source: str


def preprocess_facts(folder: str | Path, config: dict[str, Any]) -> PreprocessFacts:
    """Read the preprocessing facts of an official EVEv2 folder (see the module docstring for the order).

    Raises:
        ValueError: the folder's preprocessor normalises with another mean/std than CLIP's (our patch embedding
            uses CLIP's), or its sizes do not make whole 32-px-like cells.
    """
    folder = Path(folder)
    path = folder / PREPROCESSOR_NAME
    if path.is_file():
        pre = json.loads(path.read_text())
        for key, ours in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
            theirs = pre.get(key)
            if theirs is not None and not all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(theirs, ours)):
                raise ValueError(
                    f"{path} normalises images with {key} {theirs}, but EVEv2 models here use CLIP's {list(ours)}; "
                    "this checkpoint was trained with another preprocessing and cannot be imported as is"
                )
        facts = PreprocessFacts(
            int(pre.get("max_size", DEFAULT_MAX_SIZE)),
            int(pre.get("patch_stride", DEFAULT_PATCH)),
            int(pre.get("dense_stride", DEFAULT_MERGE)),
            f"{path.name} of the checkpoint folder",
        )
    else:
        tower = str(config.get("mm_vision_tower", ""))
        res = re.search(r"res(\d+)", tower)
        patch = re.search(r"patch(\d+)", tower)
        if res:
            facts = PreprocessFacts(
                int(res.group(1)),
                int(patch.group(1)) if patch else DEFAULT_PATCH,
                DEFAULT_MERGE,
                f"the name of mm_vision_tower ({tower!r}) in config.json; no {PREPROCESSOR_NAME} in the folder",
            )
        else:
            facts = PreprocessFacts(
                DEFAULT_MAX_SIZE,
                DEFAULT_PATCH,
                DEFAULT_MERGE,
                f"defaults of EVE-7B-HD-v2.0 (no {PREPROCESSOR_NAME} in the folder, and mm_vision_tower "
                f"{tower!r} names no resolution)",
            )
    cell = facts.patch_size * facts.merge_size
    if facts.max_size < cell or facts.max_size % cell:
        raise ValueError(f"max_size {facts.max_size} (from {facts.source}) is not a multiple of the {cell}-px cell")
    return facts


def official_v2_moe_parts(config: dict[str, Any]) -> list[str]:
    """Decoder parts with vision copies: ``moe_part`` when ``add_moe`` is set (``layernorm-self_attn-mlp``)."""
    if not config.get("add_moe", False):
        return []
    parts = config.get("moe_part") or "-".join(MOE_PARTS)
    return [p for p in str(parts).split("-") if p]


def official_v2_settings(folder: str | Path, config: dict[str, Any]) -> tuple[dict, dict, PreprocessFacts]:
    """(Qwen2 LLM config, ``EveV2Config`` fields, preprocessing facts) of an official EVEv2 folder."""
    facts = preprocess_facts(folder, config)
    allowed = (set(Qwen2Config().to_dict()) | _LEGACY_QWEN2_KEYS) - _BOOKKEEPING
    llm_config = {k: v for k, v in config.items() if k in allowed}
    llm_config["model_type"] = "qwen2"
    max_length = config.get("tokenizer_model_max_length") or config.get("max_position_embeddings", 2048)
    eve = {
        "image_size": facts.max_size,
        "patch_size": facts.patch_size,
        "merge_size": facts.merge_size,
        "vision_hidden": int(config.get("mm_hidden_size", 1024)),
        "moe_parts": official_v2_moe_parts(config),
        "max_length": int(max_length),
    }
    return llm_config, eve, facts


def split_official_v2_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, int]]:
    """Map official EVEv2 keys onto ``EveV2VLM`` keys.

    Returns:
        (our state dict, dropped counts by reason, renamed counts by old name).

    Raises:
        KeyError: a key matches no rule (not the EVEv2 layout), or a token is stored under its old and new name.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: dict[str, int] = {}
    renamed: dict[str, int] = {}
    unknown = []
    for key, tensor in state.items():
        if any(re.search(p, key) for p in DROP_PATTERNS):
            dropped["rotary buffer"] = dropped.get("rotary buffer", 0) + 1
            continue
        name = OLD_NAMES.get(key, key)
        if name != key:
            if name in state:
                raise KeyError(f"the checkpoint holds both {key} and {name}: one token under two names")
            old = key.rsplit(".", 1)[-1]
            renamed[old] = renamed.get(old, 0) + 1
        for pattern, repl in V2_KEY_RULES:
            new, n = re.subn(pattern, repl, name, count=1)
            if n:
                out[new] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} keys match no rule of the EVEv2 layout, e.g. {unknown[:5]}")
    return out, dropped, renamed


def load_official_v2_weights(vlm: nn.Module, folder: str | Path, strict: bool = True) -> ImportReport:
    """Load an official EVEv2 checkpoint folder into an ``EveV2VLM`` built from its config.

    Raises:
        ValueError: with ``strict``, when a parameter stays unset or a tensor finds no place; always, when a
            tensor's shape differs from the model's (a config that does not match the weights).
    """
    sd, dropped, renamed = split_official_v2_state_dict(read_state_dict(folder))
    report = ImportReport(dropped=dropped, renamed={f"{old} (earlier name)": n for old, n in renamed.items()})
    own = vlm.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"official EVEv2 checkpoint {folder}: {len(wrong)} tensors have another shape than its config.json "
            f"gives, e.g. {wrong[:3]}; check mm_hidden_size, hidden_size and the preprocessor's patch sizes"
        )
    result = vlm.load_state_dict(sd, strict=False)
    report.missing += list(result.missing_keys)
    report.unexpected += list(result.unexpected_keys)
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"official EVEv2 checkpoint {folder} does not match its config ({report.summary()}): missing "
            f"{report.missing[:5]}, unexpected {report.unexpected[:5]}. Check add_moe / moe_part in config.json "
            "against the moe_* tensors of the shards"
        )
    return report
