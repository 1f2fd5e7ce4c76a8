"""Batched token generation for EveVLM and EveV2VLM: one multimodal prefill, then a KV-cached decode loop.

Rows are left-padded after image expansion, so every row's next token sits at the last position. A model with
per-token decoder inputs besides the embeddings (EVEv2's ``llm_kwargs(mm)``: the image-token mask that routes
image tokens to the vision weights) gets them at prefill; cached decoding steps carry text tokens only and pass
none, and the uncached path extends every such [B, L'] mask with False for each generated token, so the image
tokens keep their vision weights on every re-run. Greedy by
default; temperature and top-p sampling on request (`GenerationConfig` refuses values out of range when it is made,
so the chat CLI and the web demo accept exactly the same settings). Image tokens count against the context length
exactly (1 + h(w+1) per image); a prompt that does not fit raises `PromptTooLongError` before the model runs.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type hints only: the CLIs check their arguments before transformers is imported
    from eve_lightning.models.eve_vlm import EveVLM
    from eve_lightning.models.evev2 import EveV2VLM


class PromptTooLongError(ValueError):
    """The prompt (text + image tokens) leaves no room to generate within the context length."""


class GenerationConfigError(ValueError):
    """A decoding option out of its range.

    Attributes:
        option: the field's name (``top_p``); a command line shows it as its flag (``--top-p``).
        reason: what the value must be and how to get what was meant, e.g. ``must be in (0, 1] ..., got 0``.
    """

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option} {reason}")
        self.option = option
        self.reason = reason


@dataclass
class GenerationConfig:
    """Decoding options, checked when made (`GenerationConfigError` names the option and its range).

    Attributes:
        max_new_tokens: upper bound of generated tokens, >= 1 (also capped by the context length).
        temperature: >= 0; 0 = greedy; > 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling mass in (0, 1] (1.0 = off); only used when sampling. 0 is refused rather than read
            as greedy: greedy decoding is ``temperature=0``.
        use_cache: KV cache (False re-runs the whole sequence each step; same tokens, slower).
        seed: sampling seed (None = torch's global generator).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    use_cache: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        check_generation_options(self.max_new_tokens, self.temperature, self.top_p)


def check_generation_options(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse decoding options out of range (the one check behind `GenerationConfig`).

    Raises:
        GenerationConfigError: naming the first option out of range, its valid range and the fix.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise GenerationConfigError("max_new_tokens", f"must be a whole number >= 1, got {max_new_tokens}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise GenerationConfigError(
            "temperature", f"must be >= 0 (0 = greedy, higher = more random), got {temperature}"
        )
    if not isinstance(top_p, numbers.Real) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        fix = "for greedy decoding (always the most likely token) use temperature 0"
        if isinstance(top_p, numbers.Real) and top_p > 1:
            fix = "1 samples from all tokens"
        raise GenerationConfigError("top_p", f"must be in (0, 1] (1 = off, the default), got {top_p}: {fix}")


def _cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of this transformers version ("cache" in 5.x, else "past_key_values")."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def decoder_kwargs(vlm: torch.nn.Module, mm) -> dict[str, torch.Tensor]:
    """Extra per-token decoder inputs of a prefill over ``mm`` (EVEv2: ``vision_mask`` [B, L']; EVE v1: none)."""
    hook = getattr(vlm, "llm_kwargs", None)
    return dict(hook(mm)) if hook is not None else {}


def extend_token_kwargs(kwargs: dict[str, torch.Tensor], n: int = 1) -> dict[str, torch.Tensor]:
    """Append ``n`` text positions (False / 0) to every per-token [B, L'] input (generated tokens are text)."""
    out = {}
    for key, value in kwargs.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(
                f"decoder input {key!r} is not a per-token [B, L] tensor; the uncached decoding path cannot extend it"
            )
        out[key] = torch.cat([value, value.new_zeros((value.shape[0], n))], 1)
    return out


def sample_next(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids (greedy, or temperature + top-p sampling)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)  # [B, V]
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(
    vlm: EveVLM | EveV2VLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    pixel_mask: torch.Tensor | None,
    eos_id: int | None,
    cfg: GenerationConfig,
    context_length: int,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, step by step ([B] int64; rows that ended yield `eos_id` again).

    Args:
        vlm: the model (eval mode): EveVLM or EveV2VLM.
        input_ids: [B, L] prompts with at most one IMAGE_TOKEN_INDEX per row, any padding side.
        attention_mask: [B, L] True on real tokens.
        pixel_values: uint8 [B, 3, S, S] or None.
        pixel_mask: [B, S, S] or None.
        eos_id: end-of-sequence id; generation of a row stops after it.
        cfg: decoding options.
        context_length: the decoder's maximum number of positions.

    Raises:
        PromptTooLongError: the expanded prompt plus one token does not fit `context_length`.
    """
    llm = vlm.llm
    mm = vlm.prepare_inputs(input_ids, attention_mask, pixel_values, pixel_mask, max_length=10**9, pad_side="left")
    prompt_len = int(mm.attention_mask.sum(1).max())
    if prompt_len + 1 > context_length:
        raise PromptTooLongError(
            f"the prompt takes {prompt_len} tokens (text + image tokens) but the model's context is {context_length}; "
            "shorten the conversation or clear it"
        )
    steps = min(cfg.max_new_tokens, context_length - mm.inputs_embeds.shape[1])
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(cfg.seed)
    cache_arg = _cache_kwarg(llm)
    mask = mm.attention_mask.long()  # [B, L']
    positions = mm.position_ids  # [B, L']
    embeds = mm.inputs_embeds  # [B, L', H]
    extra = decoder_kwargs(vlm, mm)  # EVEv2: vision_mask [B, L']
    out = llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=cfg.use_cache,
        logits_to_keep=1,
        **extra,
    )
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    embed = llm.get_input_embeddings()
    for _ in range(steps):
        token = sample_next(out.logits[:, -1], cfg, generator)  # [B]
        if eos_id is not None:
            token = torch.where(done, eos_id, token)
            done |= token == eos_id
        yield token
        if bool(done.all()):
            return
        next_pos = positions[:, -1:] + 1  # [B, 1]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = torch.cat([positions, next_pos], 1)
        if cfg.use_cache:
            kwargs = {cache_arg: _out_cache(out)}
            out = llm(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        else:
            embeds = torch.cat([embeds, embed(token[:, None]).to(embeds.dtype)], 1)
            extra = extend_token_kwargs(extra)  # the new token is text: False in the image-token mask
            out = llm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
                **extra,
            )
