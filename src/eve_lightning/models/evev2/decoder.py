"""The EVEv2 decoder: a Qwen2-family causal LM whose layers hold vision copies of their token-wise parts.

Built from transformers' Qwen2 classes (``Qwen2Config``, ``Qwen2Attention``, ``Qwen2MLP``, ``Qwen2RMSNorm``,
``Qwen2RotaryEmbedding``, the attention-function registry). With ``config.moe_parts`` naming any of
``layernorm``, ``self_attn`` and ``mlp``, every layer gets a vision copy of both RMSNorms, of q/k/v/o, or of the
MLP. Image tokens (``vision_mask``) run through the copies, text tokens through the original weights; attention
stays one joint call over the whole sequence, through the attention function of the config's backend
(``models.attention.backend_of``: "sdpa", "eager", "flex_attention", "flash_attention_2" or "torch_varlen"), with
the keyword arguments of the rows' ``models.attention`` layout, as the EVE v1 decoder receives them.
``config.routing`` chooses how the split runs (``routing.Routing``): "routed" (each token through its own branch)
or "dense" (the original: both for every token, blended). A forward without image tokens (no ``vision_mask``:
KV-cache decoding steps, text-only prompts; or a mask that marks none) runs text weights only, unless it passes
``run_vision=True``: then every vision copy runs too, on zero rows (the loss forward of a model with
``EveV2Config.uniform_module_calls``, for DeepSpeed ZeRO-3).

Parameter names of the copies are the original checkpoint's (``moe_`` before the text part's name):
``layers.N.moe_input_layernorm``, ``layers.N.moe_post_attention_layernorm``, ``layers.N.self_attn.moe_q_proj``
(``k``, ``v``, ``o`` alike) and ``layers.N.moe_mlp.{gate,up,down}_proj``; the final norm is shared.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn
from transformers import Qwen2Config
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2ForCausalLM,
    Qwen2MLP,
    Qwen2PreTrainedModel,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from eve_lightning.models import attention
from eve_lightning.models.evev2.routing import ROUTINGS, Routing

MOE_PARTS = ("layernorm", "self_attn", "mlp")  # the original's `moe_part` vocabulary
VISION_PREFIX = "moe_"  # name prefix of a vision copy; the text part's name follows it

# transformers renamed the KV cache from `past_key_values` to `cache` (5.2x); read the installed names once
_MASK_PARAMS = frozenset(inspect.signature(create_causal_mask).parameters)
_MASK_CACHE = "cache" if "cache" in _MASK_PARAMS else "past_key_values"
_MASK_EMBEDS = "inputs_embeds" if "inputs_embeds" in _MASK_PARAMS else "input_embeds"
_OUT_CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def parse_moe_parts(parts: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise ``moe_parts``: a list, or the original's dash-joined string ("layernorm-self_attn-mlp").

    Raises:
        ValueError: an unknown part name.
    """
    if parts is None:
        return ()
    items = parts.split("-") if isinstance(parts, str) else list(parts)
    items = [p for p in items if p]
    unknown = sorted(set(items) - set(MOE_PARTS))
    if unknown:
        raise ValueError(f"moe_parts {unknown} unknown: use any of {list(MOE_PARTS)} (or [] for no vision copies)")
    return tuple(p for p in MOE_PARTS if p in items)


def _moe_parts(config: Qwen2Config) -> tuple[str, ...]:
    return parse_moe_parts(getattr(config, "moe_parts", MOE_PARTS))


class ModalityAttention(Qwen2Attention):
    """Qwen2 attention with an optional vision copy of q/k/v/o; the attention itself is shared.

    The layer calls the three steps itself (projections per branch, one joint attention, output per branch), so
    that the routing of the tokens stays in the layer.
    """

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.split = "self_attn" in _moe_parts(config)
        if self.split:
            hidden, hd = config.hidden_size, self.head_dim
            self.moe_q_proj = nn.Linear(hidden, config.num_attention_heads * hd, bias=True)
            self.moe_k_proj = nn.Linear(hidden, config.num_key_value_heads * hd, bias=True)
            self.moe_v_proj = nn.Linear(hidden, config.num_key_value_heads * hd, bias=True)
            self.moe_o_proj = nn.Linear(config.num_attention_heads * hd, hidden, bias=False)

    def qkv_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(text, vision) modules of q, k and v (the same module twice when attention is not split)."""
        if not self.split:
            return [(self.q_proj, self.q_proj), (self.k_proj, self.k_proj), (self.v_proj, self.v_proj)]
        return [(self.q_proj, self.moe_q_proj), (self.k_proj, self.moe_k_proj), (self.v_proj, self.moe_v_proj)]

    def out_pair(self) -> tuple[nn.Module, nn.Module]:
        return (self.o_proj, self.moe_o_proj if self.split else self.o_proj)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Joint attention over all tokens.

        Args:
            query: [B, L, heads * D] in sequence order.
            key: [B, L, kv_heads * D].
            value: [B, L, kv_heads * D].
            position_embeddings: (cos, sin) of the rotary embedding, [B, L, D] each.
            attention_mask: whatever the attention function of the config takes (or None).
            cache: the KV cache (updated in place) or None.
            **kwargs: passed to the attention function (e.g. ``cu_seq_lens_q`` of packed rows).

        Returns:
            [B, L, heads * D], before the output projection.
        """
        bsz, length, _ = query.shape
        q = query.view(bsz, length, -1, self.head_dim).transpose(1, 2)  # [B, heads, L, D]
        k = key.view(bsz, length, -1, self.head_dim).transpose(1, 2)  # [B, kv_heads, L, D]
        v = value.view(bsz, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        backend = attention.backend_of(self.config)
        attend: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(backend, eager_attention_forward)
        out, _ = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )  # [B, L, heads, D]
        return out.reshape(bsz, length, -1)


class ModalityDecoderLayer(GradientCheckpointingLayer):
    """A Qwen2 decoder layer whose token-wise parts may have vision copies (``config.moe_parts``).

    Its forward reads and writes the residual stream in the layout of the forward's ``Routing`` ([N, H] rows).
    """

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        parts = _moe_parts(config)
        self.hidden_size = config.hidden_size
        self.self_attn = ModalityAttention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if "mlp" in parts:
            self.moe_mlp = Qwen2MLP(config)
        if "layernorm" in parts:
            self.moe_input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.moe_post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def _pair(self, name: str) -> tuple[nn.Module, nn.Module]:
        text = getattr(self, name)
        return text, getattr(self, VISION_PREFIX + name, text)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        routing: Routing | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """[N, H] stream rows in, [N, H] out (``routing`` gives their layout; required)."""
        if routing is None:
            raise ValueError("ModalityDecoderLayer needs the forward's `routing` (EveV2Model passes it)")
        r, attn = routing, self.self_attn
        residual = hidden_states  # [N, H]
        h = r.apply(hidden_states, *self._pair("input_layernorm"))  # [N, H]
        q, k, v = (r.to_sequence(r.apply(h, *pair)) for pair in attn.qkv_pairs())  # [B, L, C] each
        out = attn.attend(q, k, v, position_embeddings, attention_mask, cache, **kwargs)  # [B, L, heads * D]
        hidden_states = residual + r.apply(r.from_sequence(out), *attn.out_pair())  # [N, H]
        h = r.apply(hidden_states, *self._pair("post_attention_layernorm"))
        return hidden_states + r.apply(h, *self._pair("mlp"))


class EveV2Model(Qwen2PreTrainedModel):
    """Qwen2 decoder stack (embeddings, modality-split layers, final norm) taking a ``vision_mask``."""

    _no_split_modules: ClassVar[list[str]] = ["ModalityDecoderLayer"]
    _can_record_outputs: ClassVar[dict] = {}  # hidden states of the layers are in routing order; not offered

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        parse_moe_parts(getattr(config, "moe_parts", MOE_PARTS))  # fail early on a bad name
        if getattr(config, "routing", "routed") not in ROUTINGS:
            raise ValueError(f"config.routing must be one of {ROUTINGS}, got {config.routing!r}")
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(ModalityDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        vision_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        run_vision: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Decoder forward.

        Args:
            input_ids: [B, L] token ids, or None with ``inputs_embeds``.
            attention_mask: [B, L_past + L] padding mask, or a prepared 4D mask / block mask (packed rows).
            position_ids: [B, L] (default: continuing the cache).
            cache: KV cache (``past_key_values`` is the same argument under its older name).
            inputs_embeds: [B, L, H].
            use_cache: return the (new or updated) cache.
            vision_mask: bool [B, L], True on image tokens; None = text only (no vision weight runs, unless
                ``run_vision``).
            past_key_values: see ``cache``.
            run_vision: call every vision copy of every layer even without image tokens (on zero rows; the output
                does not change), so that every forward calls the same modules in the same order.
            **kwargs: passed to every attention call (e.g. the ``torch_varlen`` segment offsets).

        Returns:
            ``last_hidden_state`` [B, L, H] (after the final norm) and ``cache``.
        """
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [B, L, H]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache, cache = False, None  # a recomputed layer would write the cache twice
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        bsz, length, _ = inputs_embeds.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(length, device=inputs_embeds.device) + past)[None]

        masks = attention_mask
        if not isinstance(masks, dict):
            mask_kwargs = {
                "config": self.config,
                _MASK_EMBEDS: inputs_embeds,
                "attention_mask": attention_mask,
                _MASK_CACHE: cache,
                "position_ids": position_ids,
            }
            if "cache_position" in _MASK_PARAMS:  # transformers 4.x
                mask_kwargs["cache_position"] = torch.arange(past, past + length, device=inputs_embeds.device)
            masks = {"full_attention": create_causal_mask(**mask_kwargs)}
            if self.has_sliding_layers:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        mode = getattr(self.config, "routing", "routed")
        routing = Routing.build(vision_mask, mode, bsz, length, every_branch=run_vision)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)  # (cos, sin) [B, L, D]
        stream = routing.from_sequence(inputs_embeds)  # [N, H]
        for i, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            stream = layer(
                stream,
                attention_mask=masks[self.config.layer_types[i]],
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                routing=routing,
                **kwargs,
            )
        hidden = routing.to_sequence(self.norm(stream))  # the final norm is shared: [B, L, H]
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{_OUT_CACHE: cache if use_cache else None})


class EveV2ForCausalLM(Qwen2PreTrainedModel):
    """``EveV2Model`` + LM head: the LLM of EVEv2 (keys ``model.*`` and ``lm_head.weight``, as Qwen2ForCausalLM)."""

    _tied_weights_keys = Qwen2ForCausalLM._tied_weights_keys  # the installed transformers' format
    _no_split_modules: ClassVar[list[str]] = ["ModalityDecoderLayer"]
    _can_record_outputs: ClassVar[dict] = {}

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.model = EveV2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of the last ``logits_to_keep`` positions (0 = all): [B, K, V]; see ``EveV2Model.forward``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            vision_mask=vision_mask,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)  # [B, K, V]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_OUT_CACHE: getattr(out, _OUT_CACHE)})


# ---------------------------------------------------------------------------------------------- vision copies


def decoder_of(model: nn.Module) -> nn.Module:
    """The ``EveV2Model`` inside an EveWithTeacher, EveV2VLM, EveV2ForCausalLM (or the model itself)."""
    for attr in ("vlm", "llm", "model"):
        while not isinstance(model, EveV2Model) and hasattr(model, attr):
            model = getattr(model, attr)
    if not isinstance(model, EveV2Model):
        raise TypeError(f"no EVEv2 decoder found in {type(model).__name__}")
    return model


def vision_text_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Parameter]]:
    """(vision parameter name, vision parameter, its text parameter) for every vision copy of the decoder.

    Names are relative to the decoder (``layers.3.self_attn.moe_q_proj.weight``); the text parameter's name is the
    same without ``moe_`` (the original's rule).
    """
    decoder = decoder_of(model)
    params = dict(decoder.named_parameters())
    for name, param in params.items():
        if is_vision_parameter(name):
            yield name, param, params[name.replace(VISION_PREFIX, "", 1)]


def is_vision_parameter(name: str) -> bool:
    """Whether a parameter name (at any prefix depth) belongs to a vision copy of the decoder."""
    return any(part.startswith(VISION_PREFIX) for part in name.split(".")[:-1])


@torch.no_grad()
def copy_text_to_vision(model: nn.Module) -> int:
    """The copy step between stage 0 and stage 1: every vision copy takes the values of its text weights.

    Works on an EveWithTeacher, EveV2VLM, EveV2ForCausalLM or EveV2Model (full, unsharded parameters).

    Returns:
        How many tensors were copied.
    """
    n = 0
    for _, vision, text in vision_text_pairs(model):
        vision.copy_(text)
        n += 1
    return n
