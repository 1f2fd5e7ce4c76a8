"""Official EVE v1 checkpoint files written from a test model, independently of the importer's rules."""

from __future__ import annotations

import json

import torch


def official_layout(model) -> dict[str, torch.Tensor]:
    """Write the test model's weights under the official key names (spec section 8.3), independently of the
    importer's rules."""
    vlm, out = model.vlm, {}
    for k, v in vlm.llm.state_dict().items():
        out[k] = v.clone()  # LLaMA keys as-is: model.layers..., lm_head.weight
    pe = vlm.patch_embed
    out["model.vision_tower.patch_embedding.weight"] = pe.conv.weight
    out["model.vision_tower.class_embedding"] = pe.cls_token
    out["model.vision_tower.split_embedding"] = pe.split_token
    for name in ("local", "global"):
        attn = getattr(pe, f"{name}_attn")
        base = f"model.vision_tower.{name}_attention."
        out[base + "q.0.weight"], out[base + "q.0.bias"] = attn.q_norm.weight, attn.q_norm.bias
        out[base + "q.1.weight"] = attn.q_proj.weight
        out[base + "kv.0.weight"], out[base + "kv.0.bias"] = attn.kv_norm.weight, attn.kv_norm.bias
        out[base + "kv.1.weight"] = attn.kv_proj.weight
        out[base + "proj.weight"], out[base + "proj.bias"] = attn.out_proj.weight, attn.out_proj.bias
    out["model.mm_projector.0.weight"], out["model.mm_projector.0.bias"] = (
        vlm.projector.fc1.weight,
        vlm.projector.fc1.bias,
    )
    out["model.mm_projector.2.weight"], out["model.mm_projector.2.bias"] = (
        vlm.projector.fc2.weight,
        vlm.projector.fc2.bias,
    )
    al = vlm.aligner
    for j, (norm, proj) in enumerate(zip(al.layer_norms, al.layer_projs)):
        out[f"model.vision_tower_compressor.norm_layer.{j}.0.weight"] = norm.weight
        out[f"model.vision_tower_compressor.norm_layer.{j}.0.bias"] = norm.bias
        out[f"model.vision_tower_compressor.norm_layer.{j}.1.weight"] = proj.weight
    for ours, theirs in (("top_proj", "input_layer"), ("fused_proj", "output_layer")):
        out[f"model.vision_tower_compressor.{theirs}.weight"] = getattr(al, ours).weight
        out[f"model.vision_tower_compressor.{theirs}.bias"] = getattr(al, ours).bias
    clip_state = model.teacher.clip.state_dict()
    top = model.teacher.kept_layers  # the real checkpoint also holds CLIP's last layer, which the teacher skips
    last = f".layers.{top - 1}."
    clip_state |= {k.replace(last, f".layers.{top}."): v for k, v in clip_state.items() if last in k}
    for k, v in clip_state.items():
        k = k if k.startswith("vision_model.") else "vision_model." + k  # transformers-4.31 names
        out["model.vision_clip.backbone." + k] = v
        out["model.vision_tower_compressor.clip_layer.backbone." + k] = v  # the shared module, saved twice
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_sharded_bin(state, folder):
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
