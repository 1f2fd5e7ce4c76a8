"""Published model shapes, and EVE models with random weights built from them or from a model config.

``DECODERS`` holds the decoder shapes of the two EVE sizes (TinyLlama-1.1B for ``eve_1b``, Vicuna-7B for ``eve_7b``),
``CLIP_L14_336`` the teacher's (CLIP ViT-L/14 at 336 px). The planner uses them when a config names a checkpoint
folder that is not on the machine; ``build_random_model`` builds a whole EVE of such a shape (or of a model config
file) with random weights, on any device, the meta device included: the throughput benchmark
(``eve_lightning.bench.train``) trains it, and the planner rebuilds it to model the benchmark's memory.
"""

from __future__ import annotations

import torch

from eve_lightning.models import attention
from eve_lightning.models.build import EveWithTeacher, build_eve_model
from eve_lightning.models.clip_teacher import build_teacher
from eve_lightning.models.eve_vlm import EveConfig, EveVLM
from eve_lightning.models.llm import build_llm

DECODERS = {
    "eve_1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                   num_key_value_heads=4),
    "eve_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32),
}  # fmt: skip
CLIP_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)
# The published Vicuna-7B decoder config (EVE-7B's decoder), as HF config keyword arguments.
VICUNA_7B = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, **DECODERS["eve_7b"])


def build_random_model(name: str, workload: str, device: torch.device, attn: str | None = None) -> EveWithTeacher:
    """Random-weight EVE of the given decoder shape; the decoder is frozen (bf16) for prealign.

    ``name`` is a key of ``DECODERS`` (with the EVE-7B patch embedding and a CLIP ViT-L/14-336-shaped teacher) or
    a model config file that gives the shapes (``llm.config`` and ``teacher.config``, e.g. conf/model/demo_125m.yaml):
    decoder, patch embedding and teacher as configured there, with random weights. ``attn`` (an attention backend)
    defaults to ``attention.fastest_packed_backend()``: flash-attention when flash-attn is installed, else flex.
    """
    attn = attention.validate(attn or attention.fastest_packed_backend())
    if name.endswith(".yaml"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(name), resolve=False)
        cfg.pop("_target_", None)
        if not cfg["llm"].get("config") or (cfg["eve"].get("align_weight", 1) and not cfg["teacher"].get("config")):
            raise SystemExit(f"{name}: needs llm.config and teacher.config (shapes) to build random weights")
        cfg["llm"] |= {"attn_implementation": attn, "path": None}  # random weights: the config must give shapes
        if cfg.get("teacher"):
            cfg["teacher"]["path"] = None
        cfg["eve"] |= {"max_length": 4096, "check_alignment": False}
        with torch.device(device):
            model = build_eve_model(**cfg)
        llm = model.vlm.llm
    else:
        llm_cfg = dict(model_type="llama", vocab_size=32000, max_position_embeddings=32768, **DECODERS[name])
        with torch.device(device):
            llm = build_llm(config=llm_cfg, attn_implementation=attn)
            eve = EveConfig(image_size=672, max_length=4096, align_layer_interval=4, check_alignment=False)
            vlm = EveVLM(llm, eve)
            teacher = build_teacher(config=CLIP_L14_336, dtype="bfloat16")
        model = EveWithTeacher(vlm, teacher)
    if workload == "prealign":
        llm.to(torch.bfloat16).requires_grad_(False)
    return model
