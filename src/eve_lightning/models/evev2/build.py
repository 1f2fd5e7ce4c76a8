"""Factories that Hydra configs call for EVEv2: the modality-split decoder and the training model around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from eve_lightning.models import attention
from eve_lightning.models.build import EveWithTeacher
from eve_lightning.models.evev2.decoder import MOE_PARTS, EveV2ForCausalLM, copy_text_to_vision, is_vision_parameter
from eve_lightning.models.evev2.model import EveV2Config, EveV2VLM
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def build_evev2_decoder(
    path: str | None = None,
    config: dict | None = None,
    dtype: str | None = None,
    attn_implementation: str = attention.DEFAULT,
    moe_parts: list[str] | str = MOE_PARTS,
    routing: str = "routed",
) -> EveV2ForCausalLM:
    """Build the EVEv2 LLM: a Qwen2-family decoder with vision copies of ``moe_parts``.

    Vision copies that the weights do not provide (a random config, or a text-only checkpoint such as
    Qwen2.5-7B-Instruct) start as copies of their text weights, which is the original's copy step; copies held by
    the checkpoint are kept.

    Args:
        path: local folder of a Qwen2 causal LM (HF format). Nothing is downloaded.
        config: Qwen2 config keyword arguments (random weights) when ``path`` is None; ``model_type`` must be
            "qwen2" if given.
        dtype: torch dtype name of the weights (default float32).
        attn_implementation: the attention backend (config key ``model.llm.attn_implementation``), one of
            ``models.attention.BACKENDS``; checked, and handed to transformers, by ``models.attention``.
        moe_parts: decoder parts with a vision copy (see ``EveV2Config``).
        routing: "routed" or "dense".
    """
    backend = attention.validate(attn_implementation)
    torch_dtype = getattr(torch, dtype) if dtype else torch.float32
    extra = {"moe_parts": list(EveV2Config(moe_parts=moe_parts).moe_parts), "routing": routing}
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"LLM folder {path!r} does not exist; set model.llm.path to a local HF checkpoint "
                "(e.g. a downloaded Qwen2.5-7B-Instruct)"
            )
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        _check_family(cfg.model_type)
        for key, value in extra.items():
            setattr(cfg, key, value)
        llm, info = EveV2ForCausalLM.from_pretrained(
            path,
            config=cfg,
            local_files_only=True,
            dtype=torch_dtype,
            output_loading_info=True,
            **attention.load_kwargs(backend),
        )
        missing = [k for k in info.get("missing_keys", []) if is_vision_parameter(k)]
        if missing:
            n = copy_text_to_vision(llm)
            log.info("vision copies not in %s: %d tensors initialised from their text weights", path, n)
        return llm
    if config is None:
        raise ValueError("build_evev2_decoder needs a local `path` or a `config`")
    kwargs = dict(config)
    _check_family(kwargs.pop("model_type", "qwen2"))
    cfg = AutoConfig.for_model("qwen2", **kwargs, **extra)
    attention.configure(cfg, backend)
    llm = EveV2ForCausalLM._from_config(cfg, dtype=torch_dtype)
    copy_text_to_vision(llm)
    return llm


def _check_family(model_type: str) -> None:
    if model_type != "qwen2":
        raise ValueError(
            f"the EVEv2 decoder is a Qwen2-family model (model_type 'qwen2', e.g. Qwen2.5-7B-Instruct); got "
            f"{model_type!r}. EVE v1 models use eve_lightning.models.build.build_eve_model"
        )


def build_evev2_model(llm: dict[str, Any], eve: dict[str, Any] | None = None) -> EveWithTeacher:
    """Build the EVEv2 training model from plain dicts (the wrapper v1 uses, without a teacher).

    Args:
        llm: ``build_evev2_decoder`` arguments except ``moe_parts`` and ``routing`` (path | config, dtype,
            attn_implementation).
        eve: ``EveV2Config`` fields.
    """
    cfg = EveV2Config(**(eve or {}))
    decoder = build_evev2_decoder(**llm, moe_parts=cfg.moe_parts, routing=cfg.routing)
    return EveWithTeacher(EveV2VLM(decoder, cfg), None)
