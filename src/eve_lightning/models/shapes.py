"""Published model shapes, and EVE models with random weights built from them or from a model config.

``DECODERS`` holds the decoder shapes of the two EVE sizes (TinyLlama-1.1B for ``eve_1b``, Vicuna-7B for ``eve_7b``),
``CLIP_L14_336`` the teacher's (CLIP ViT-L/14 at 336 px). ``EVEV2_DECODERS`` holds the Qwen2-family decoders of
the two EVEv2 sizes (``evev2_1b``: conf/model/evev2_1b.yaml, Qwen2.5-1.5B widths; ``evev2_7b``: the published
Qwen2.5-7B-Instruct shape that conf/model/evev2_7b.yaml loads), with ``EVEV2_EVE`` the EVEv2-7B patch embedding. The
planner uses them when a config names a checkpoint folder that is not on the machine; ``build_random_model`` builds
a whole EVE or EVEv2 of such a shape (or of a model config file) with random weights, on any device, the meta device
included: the throughput benchmark (``eve_lightning.bench.train``) trains it, and the planner rebuilds it to model
the benchmark's memory.
"""

from __future__ import annotations

import torch

from eve_lightning.models import attention
from eve_lightning.models.build import EveWithTeacher, build_eve_model
from eve_lightning.models.clip_teacher import build_teacher
from eve_lightning.models.eve_vlm import EveConfig, EveVLM
from eve_lightning.models.evev2 import MOE_PARTS, build_evev2_model
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
_QWEN2 = dict(model_type="qwen2", max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1.0e-6)
EVEV2_DECODERS = {
    "evev2_1b": dict(_QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "evev2_7b": dict(_QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}  # fmt: skip
QWEN25_7B = EVEV2_DECODERS["evev2_7b"]  # Qwen2.5-7B-Instruct: EVEv2-7B's decoder
# EVEv2 around the decoder as conf/model/evev2_*.yaml set it (800 px images, vision copies of every part), with the
# longer rows of the later stages so that no benchmark sample is cut
EVEV2_EVE = dict(image_size=800, patch_size=16, merge_size=2, vision_hidden=1024, moe_parts=list(MOE_PARTS),
                 max_length=4096, routing="routed")  # fmt: skip
MODEL_NAMES = (*DECODERS, *EVEV2_DECODERS)  # the shapes build_random_model knows by name


def build_random_model(name: str, workload: str, device: torch.device, attn: str | None = None) -> EveWithTeacher:
    """Random-weight EVE or EVEv2 of the given decoder shape; the decoder is frozen (bf16) for prealign.

    ``name`` is a key of ``DECODERS`` (with the EVE-7B patch embedding and a CLIP ViT-L/14-336-shaped teacher), of
    ``EVEV2_DECODERS`` (with ``EVEV2_EVE``; no teacher) or a model config file that gives the shapes (``llm.config``
    and, for EVE v1 with an alignment loss, ``teacher.config``; e.g. conf/model/demo_125m.yaml, evev2_1b.yaml):
    decoder, patch embedding and teacher as configured there, with random weights. ``attn`` (an attention backend)
    defaults to ``attention.fastest_packed_backend()``: flash-attention when flash-attn is installed, else flex.

    Raises:
        ValueError: ``prealign`` for an EVEv2 model (its stage 0 has no vision copies; not a benchmark workload).
    """
    attn = attention.validate(attn or attention.fastest_packed_backend())
    if name in EVEV2_DECODERS or (name.endswith(".yaml") and "evev2" in _target_of(name)):
        if workload == "prealign":
            raise ValueError(
                f"{name}: EVEv2 has no prealign workload (its stage 0 trains the patch embedding of a decoder without "
                "vision copies); benchmark it with --workload pretrain or sft"
            )
        return _random_evev2(name, device, attn)
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


def _target_of(path: str) -> str:
    """The ``_target_`` of a model config file ("" when it names none)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(path).get("_target_", ""))


def _random_evev2(name: str, device: torch.device, attn: str) -> EveWithTeacher:
    """Random-weight EVEv2 (no teacher) of an ``EVEV2_DECODERS`` shape or of an EVEv2 model config file."""
    if name in EVEV2_DECODERS:
        llm, eve = {"config": dict(EVEV2_DECODERS[name])}, dict(EVEV2_EVE)
    else:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(name), resolve=False)
        if not cfg["llm"].get("config"):
            raise SystemExit(f"{name}: needs llm.config (shapes) to build random weights")
        llm = {"config": cfg["llm"]["config"]}
        eve = cfg.get("eve") or {}
        eve["max_length"] = max(int(eve.get("max_length", 0)), EVEV2_EVE["max_length"])
    with torch.device(device):
        return build_evev2_model({**llm, "attn_implementation": attn}, eve)
