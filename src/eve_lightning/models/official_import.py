"""Import of the official EVE v1 checkpoint layout (BAAI/EVE-7B-v1.0 and -HD) into our modules.

EVEv2's layout (BAAI/EVE-7B-HD-v2.0) is imported by ``official_import_v2``, which shares the file readers and the
report of this module.

The official state dict (spec section 8.3) keeps the LLaMA keys as-is and puts the EVE parts under
`model.vision_tower.*` (PEL), `model.mm_projector.*` (projector), `model.vision_tower_compressor.*` (PAL) and the
CLIP teacher under `model.vision_clip.backbone.*`. Files are sharded pickles with an index, or safetensors.
Pickles are read with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from eve_lightning.checkpoints.safe_load import check_loadable, safe_load

# (pattern, replacement) on official keys -> keys of EveVLM. Applied first match wins.
VLM_KEY_RULES: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.patch_embedding\.", "patch_embed.conv."),
    (r"^model\.vision_tower\.class_embedding$", "patch_embed.cls_token"),
    (r"^model\.vision_tower\.split_embedding$", "patch_embed.split_token"),
    (r"^model\.vision_tower\.(local|global)_attention\.q\.0\.", r"patch_embed.\1_attn.q_norm."),
    (r"^model\.vision_tower\.(local|global)_attention\.q\.1\.", r"patch_embed.\1_attn.q_proj."),
    (r"^model\.vision_tower\.(local|global)_attention\.kv\.0\.", r"patch_embed.\1_attn.kv_norm."),
    (r"^model\.vision_tower\.(local|global)_attention\.kv\.1\.", r"patch_embed.\1_attn.kv_proj."),
    (r"^model\.vision_tower\.(local|global)_attention\.proj\.", r"patch_embed.\1_attn.out_proj."),
    (r"^model\.mm_projector\.0\.", "projector.fc1."),
    (r"^model\.mm_projector\.2\.", "projector.fc2."),
    (r"^model\.vision_tower_compressor\.norm_layer\.(\d+)\.0\.", r"aligner.layer_norms.\1."),
    (r"^model\.vision_tower_compressor\.norm_layer\.(\d+)\.1\.", r"aligner.layer_projs.\1."),
    (r"^model\.vision_tower_compressor\.input_layer\.", "aligner.top_proj."),
    (r"^model\.vision_tower_compressor\.output_layer\.", "aligner.fused_proj."),
    (r"^(model\.|lm_head\.)", r"llm.\1"),
]
TEACHER_PREFIX = "model.vision_clip.backbone."
# Keys that carry no weights of their own: the PAL's second reference to the CLIP tower, RoPE buffers.
DROP_PATTERNS = [r"^model\.vision_tower_compressor\.clip_layer\.", r"rotary_emb\.inv_freq$"]


@dataclass
class ImportReport:
    """What an import did. Empty `missing` and `unexpected` mean every tensor found its place."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    renamed: dict[str, int] = field(default_factory=dict)  # old name -> count (EVEv2's earlier token names)

    def summary(self) -> str:
        parts = [f"missing {len(self.missing)}", f"unexpected {len(self.unexpected)}"]
        parts += [f"dropped {n} ({why})" for why, n in self.dropped.items()]
        parts += [f"renamed {n} ({old})" for old, n in self.renamed.items()]
        return ", ".join(parts)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder: safetensors or pickle .bin, single file or shards of an index.

    Raises:
        FileNotFoundError: the folder has none of the known weight files.
    """
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return [folder / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors[.index.json] or pytorch_model.bin[.index.json]"
    )


def check_weight_files(folder: str | Path) -> None:
    """Prove, before any model is built, that the folder's pickle shards load weights-only (see `safe_load`)."""
    for path in weight_files(folder):
        if path.suffix != ".safetensors":
            check_loadable(path)


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint folder (see `weight_files`)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        state.update(_read_file(path))
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return safe_load(path, mmap=True)


def split_official_state_dict(
    state: dict[str, torch.Tensor], teacher_has_vision_model_prefix: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """Map official keys onto (EveVLM keys, ClipTeacher keys); returns the dropped counts by reason too.

    Args:
        state: the official state dict.
        teacher_has_vision_model_prefix: whether the installed CLIPVisionModel nests its weights under
            `vision_model.` (transformers 4.x) or not (5.x).

    Raises:
        KeyError: a key matches no rule (an unknown layout, e.g. a different EVE version).
    """
    vlm, teacher, dropped = {}, {}, {}
    unknown = []
    for key, tensor in state.items():
        if any(re.search(p, key) for p in DROP_PATTERNS):
            dropped["duplicate or buffer"] = dropped.get("duplicate or buffer", 0) + 1
            continue
        if key.startswith(TEACHER_PREFIX):
            sub = key[len(TEACHER_PREFIX) :]
            if not teacher_has_vision_model_prefix:
                sub = sub.removeprefix("vision_model.")
            teacher["clip." + sub] = tensor
            continue
        for pattern, repl in VLM_KEY_RULES:
            new, n = re.subn(pattern, repl, key, count=1)
            if n:
                vlm[new] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} keys match no rule of the EVE v1 layout, e.g. {unknown[:5]}")
    return vlm, teacher, dropped


def load_official_weights(
    vlm: nn.Module, folder: str | Path, teacher: nn.Module | None = None, strict: bool = True
) -> ImportReport:
    """Load an official EVE v1 checkpoint folder into an EveVLM (and optionally its ClipTeacher).

    Aligner and teacher tensors are dropped (and counted) when the model was built without them, e.g. for
    inference.

    Raises:
        ValueError: with `strict`, when any parameter of the model stays unset or a tensor finds no place.
    """
    state = read_state_dict(folder)
    has_prefix = teacher is not None and any(k.startswith("clip.vision_model.") for k in teacher.state_dict())
    vlm_sd, teacher_sd, dropped = split_official_state_dict(state, has_prefix)
    report = ImportReport(dropped=dropped)
    aligner_keys = [k for k in vlm_sd if k.startswith("aligner.")]
    if getattr(vlm, "aligner", None) is None and aligner_keys:
        for key in aligner_keys:
            del vlm_sd[key]
        report.dropped["aligner (not built)"] = len(aligner_keys)
    result = vlm.load_state_dict(vlm_sd, strict=False)
    report.missing += list(result.missing_keys)
    report.unexpected += list(result.unexpected_keys)
    if teacher is None:
        if teacher_sd:
            report.dropped["teacher (not built)"] = len(teacher_sd)
    else:
        unused = teacher.unused_keys(list(teacher_sd)) if hasattr(teacher, "unused_keys") else []
        for key in unused:
            del teacher_sd[key]
        if unused:
            report.dropped["teacher layers above the distilled one"] = len(unused)
        result = teacher.load_state_dict(teacher_sd, strict=False)
        report.missing += [f"teacher.{k}" for k in result.missing_keys]
        report.unexpected += [f"teacher.{k}" for k in result.unexpected_keys]
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"official checkpoint {folder} does not match the model ({report.summary()}): "
            f"missing {report.missing[:5]}, unexpected {report.unexpected[:5]}. Check that the model config "
            "(LLM size, image_size, vision_hidden) matches the checkpoint's config.json"
        )
    return report
