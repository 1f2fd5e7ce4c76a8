"""Decoder LLM loading: any HF causal LM (LLaMA family first) from a local folder or from a config dict."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from eve_lightning.models import attention


def build_llm(
    path: str | None = None,
    config: dict | None = None,
    dtype: str | None = None,
    attn_implementation: str = attention.DEFAULT,
) -> PreTrainedModel:
    """Build the decoder.

    Args:
        path: local folder of an HF causal LM (e.g. vicuna-7b-v1.5). Nothing is downloaded.
        config: keyword arguments of the model config, with `model_type` (default "llama"); used when `path`
            is None, giving random weights (tests, debug, small from-scratch runs).
        dtype: torch dtype name for the weights (e.g. "bfloat16"); default float32.
        attn_implementation: the attention backend (config key ``model.llm.attn_implementation``), one of
            ``models.attention.BACKENDS``; checked, and handed to transformers, by ``models.attention``.

    Raises:
        ValueError: an unknown attention backend (the message lists the choices).
    """
    backend = attention.validate(attn_implementation)
    torch_dtype = getattr(torch, dtype) if dtype else torch.float32
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"LLM folder {path!r} does not exist; set model.llm.path to a local HF checkpoint "
                "(e.g. a downloaded vicuna-7b-v1.5)"
            )
        return AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype, **attention.load_kwargs(backend)
        )
    if config is None:
        raise ValueError("build_llm needs a local `path` or a `config`")
    cfg = dict(config)
    cfg_obj = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
    attention.configure(cfg_obj, backend)
    return AutoModelForCausalLM.from_config(cfg_obj, dtype=torch_dtype)


def residual_dtype(weight_dtype: torch.dtype, device: torch.device, autocast_residual: bool) -> torch.dtype:
    """The dtype of the decoder's input embeddings, and so of its residual stream.

    The weights' dtype (float32 under ``precision=bf16-mixed``: autocast casts only the matmuls' inputs, so the hidden
    states between blocks, the RMSNorms' inputs and the rotary cos/sin stay float32), or with ``autocast_residual``
    the autocast dtype when autocast is on (bf16: half the memory traffic of the decoder's elementwise kernels and
    half its saved residual activations; the original EVE's DeepSpeed bf16 runs keep their bf16 weights' residual).
    """
    if autocast_residual and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight_dtype
