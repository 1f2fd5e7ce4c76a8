"""EveV2VLM: the EVEv2 model (patch embedding -> token splice -> modality-split Qwen2 decoder) and its CE loss.

One forward serves training and inference prefill, as EVE v1's ``EveVLM`` does: the images of all placeholders are
embedded in one batched call and spliced into the rows (``splice``), the decoder runs once with the image-token mask
that routes tokens to the vision weights, and logits are computed only at supervised positions. There is no CLIP
teacher and no alignment loss (``EveOutput.loss_align`` is 0), so the Lightning module and the benchmark drive it
like a v1 model built with ``align_weight: 0``.

With ``EveV2Config.uniform_module_calls`` (for DeepSpeed ZeRO-3) a forward whose batch holds no image still calls the
patch embedding (on zero images) and every layer's vision copies (on zero rows), as an image batch does.

Generation uses the same hooks as v1 (``prepare_inputs`` with ``pad_side="left"``, then ``llm(...)`` with a KV
cache); the prefill call must also pass ``llm_kwargs(mm)`` (the image-token mask). Decoding steps carry text tokens
only and run the text weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from eve_lightning.models import attention
from eve_lightning.models.eve_vlm import EveOutput
from eve_lightning.models.evev2.decoder import MOE_PARTS, EveV2ForCausalLM, is_vision_parameter, parse_moe_parts
from eve_lightning.models.evev2.patch_embedding import EveV2PatchEmbedding
from eve_lightning.models.evev2.routing import ROUTINGS
from eve_lightning.models.evev2.splice import DecoderInputs, splice_image_tokens
from eve_lightning.models.image_inputs import select_canvases
from eve_lightning.models.llm import residual_dtype
from eve_lightning.models.losses import causal_lm_loss, lm_head_calls, supervised_positions
from eve_lightning.utils.flops import sample_token_totals


@dataclass
class EveV2Config:
    """Hyperparameters of EVEv2 around the LLM (the LLM keeps its own HF config).

    Attributes:
        image_size: canvas side in px (800 for stages 0-1.0, 1600 from stage 1.1 on; any multiple of 32 runs).
        patch_size: first convolution's patch in px (16).
        merge_size: second convolution's window in patches (2): one token per 32 x 32 px.
        vision_hidden: width of the first convolution (1024).
        moe_parts: decoder parts with a vision copy, any of "layernorm", "self_attn", "mlp" ([] = none, as in
            stage 0); the original's dash-joined string is accepted too.
        max_length: sequence cap after image expansion (2048; 4096 from stage 1.1, 5000 in SFT).
        routing: "routed" (each token through its own branch) or "dense" (both branches for every token, blended:
            the original's formulation, a reference).
        autocast_residual: the decoder's input embeddings, and with them its residual stream, take the autocast
            dtype (bf16 under ``precision=bf16-mixed``) instead of the weights' float32 (``llm.residual_dtype``).
        uniform_module_calls: every loss forward (``forward``: training and validation steps, with or without gradients)
            calls every vision module, in the order a batch with images calls them: without an image, the patch
            embedding runs on zero images (its empty output spliced like image tokens) and every layer's vision copies
            on zero rows after its text weights (``routing.Routing`` ``every_branch``). Needed under DeepSpeed ZeRO-3,
            which gathers a module's parameters with a collective of all ranks when the module is called: a rank whose
            micro-batch holds no image would otherwise skip gathers the others wait in. Losses and gradients are the
            same either way (the vision parameters get exact zero gradients from the empty calls instead of the
            zero-valued term over them). The LM head is called as often on every rank (``losses.causal_lm_loss``'s
            ``lm_head_calls``). Generation (``prepare_inputs`` + ``llm``) is not affected. Set by the
            LightningModule under DeepSpeed ZeRO-3.
    """

    image_size: int = 800
    patch_size: int = 16
    merge_size: int = 2
    vision_hidden: int = 1024
    moe_parts: list[str] = field(default_factory=lambda: list(MOE_PARTS))
    max_length: int = 2048
    routing: str = "routed"
    autocast_residual: bool = False
    uniform_module_calls: bool = False

    def __post_init__(self) -> None:
        self.moe_parts = list(parse_moe_parts(self.moe_parts))
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.image_size % self.cell_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the {self.cell_size}-px token cell")

    @property
    def cell_size(self) -> int:
        """Pixels per token side (patch_size * merge_size = 32)."""
        return self.patch_size * self.merge_size

    @property
    def canvas_grid(self) -> int:
        """Token cells per canvas side (25 at 800 px, 50 at 1600 px)."""
        return self.image_size // self.cell_size

    @property
    def align_weight(self) -> float:
        """EVEv2 has no alignment loss (read by the Lightning module's loss reduction)."""
        return 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class EveV2VLM(nn.Module):
    """Encoder-free VLM around an ``EveV2ForCausalLM``."""

    aligner = None  # no alignment head (the v1 training wrapper looks for one)

    def __init__(self, llm: EveV2ForCausalLM, config: EveV2Config | dict | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, EveV2Config) else EveV2Config(**(config or {}))
        if not isinstance(llm, EveV2ForCausalLM):
            raise TypeError(
                f"EveV2VLM needs an EveV2ForCausalLM (build_evev2_model makes one), got {type(llm).__name__}"
            )
        llm_parts = list(parse_moe_parts(getattr(llm.config, "moe_parts", MOE_PARTS)))
        if llm_parts != cfg.moe_parts:
            raise ValueError(
                f"the decoder was built with moe_parts {llm_parts} but the config asks for {cfg.moe_parts}; build "
                "both from the same config (build_evev2_model)"
            )
        llm.config.routing = cfg.routing  # a runtime choice, not part of the weights
        self.config = cfg
        self.llm = llm
        self.patch_embed = EveV2PatchEmbedding(
            cfg.vision_hidden, llm.config.hidden_size, cfg.patch_size, cfg.merge_size
        )

    def set_routing(self, mode: str) -> None:
        """Switch how the decoder splits tokens between text and vision weights: "routed" or "dense" (same weights).

        Raises:
            ValueError: an unknown mode (the message lists the choices).
        """
        if mode not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
        self.config.routing = mode
        self.llm.config.routing = mode  # read by the decoder at every forward

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        max_length: int | None = None,
        pad_side: str = "right",
        position_ids: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        run_vision: bool = False,
    ) -> DecoderInputs:
        """Embed the images and splice them at their placeholders (arguments as EVE v1's ``prepare_inputs``).

        Args:
            input_ids: [B, L], at most one IMAGE_TOKEN_INDEX per row (padded) or per sample (packed).
            attention_mask: [B, L] True/1 on real tokens.
            pixel_values: uint8 [B, 3, H, W] indexed by row (padded), or [N, 3, H, W] one per placeholder (packed);
                square or rectangular canvases.
            pixel_mask: [B, H, W] or [N, H, W], like ``pixel_values``.
            labels: [B, L] or None.
            max_length: cap after expansion (default ``config.max_length``; packed rows are never cut).
            pad_side: "right" (training) or "left" (batched generation).
            position_ids: packed rows: [B, L] positions in expanded coordinates.
            seq_ids: packed rows: [B, L] sample index within the row (-1 on padding).
            run_vision: without a placeholder, still run the patch embedding, on zero images, and splice its empty
                output (``EveV2Config.uniform_module_calls``).
        """
        found = select_canvases(input_ids, attention_mask, pixel_values, pixel_mask, packed=seq_ids is not None)
        image = None
        if found.pixels is not None:
            image = self.patch_embed(found.pixels, found.mask)
        elif run_vision:
            image = self.patch_embed(*self._no_images(input_ids.device))  # tokens [0, H]
        return splice_image_tokens(
            self.llm.get_input_embeddings(),
            self.llm.config.hidden_size,
            input_ids,
            attention_mask,
            image,
            labels=labels,
            max_length=max_length or self.config.max_length,
            pad_side=pad_side,
            position_ids=position_ids,
            seq_ids=seq_ids,
            dtype=residual_dtype(
                self.llm.get_input_embeddings().weight.dtype, input_ids.device, self.config.autocast_residual
            ),
        )

    def _no_images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty batch of canvases one token cell wide: uint8 [0, 3, c, c] pixels and [0, c, c] masks."""
        c = self.config.cell_size
        pixels = torch.zeros(0, 3, c, c, dtype=torch.uint8, device=device)
        return pixels, pixels[:, 0]

    @staticmethod
    def llm_kwargs(mm: DecoderInputs) -> dict:
        """Keyword arguments of ``llm(...)`` / the decoder for a forward over ``mm`` besides the usual ones."""
        return {"vision_mask": mm.vision_mask}

    def decoder_kwargs(self, mm: DecoderInputs) -> dict:
        """Attention keyword arguments of the decoder for ``mm`` under the decoder's backend (``models.attention``).

        Padding mask and positions; for packed rows the block mask, dense block-diagonal mask or segment offsets the
        backend takes. Reads one count back from the device for ``torch_varlen``: call it before the decoder runs.
        """
        return mm.layout.decoder_kwargs(attention.backend_of(self.llm))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        teacher_cell_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
    ) -> EveOutput:
        """Training forward: next-token CE at supervised positions.

        Args:
            input_ids: [B, L], see ``prepare_inputs``.
            attention_mask: [B, L].
            labels: [B, L].
            pixel_values: uint8 [B, 3, H, W] (padded) or [N, 3, H, W] (packed).
            pixel_mask: [B, H, W] or [N, H, W].
            teacher_features: must be None (EVEv2 has no teacher; the argument keeps v1's call signature).
            teacher_cell_mask: must be None.
            position_ids: packed layout only.
            seq_ids: packed layout only; attention then stays inside each packed sample.
        """
        if teacher_features is not None or teacher_cell_mask is not None:
            raise ValueError("EVEv2 has no CLIP teacher or alignment loss; build the training model without a teacher")
        run_vision = self.config.uniform_module_calls  # every vision module, whatever the batch holds
        mm = self.prepare_inputs(
            input_ids,
            attention_mask,
            pixel_values,
            pixel_mask,
            labels,
            position_ids=position_ids,
            seq_ids=seq_ids,
            run_vision=run_vision,
        )
        # read counts back before the decoder is queued (as v1 does): after it each read-back would wait for it
        ce_positions = supervised_positions(mm.labels)
        head_calls = lm_head_calls(ce_positions[2].numel(), mm.labels.device) if run_vision else None  # ZeRO-3
        counts = [sample_token_totals(mm.layout.seq_ids), mm.vision_mask.sum().long()[None], mm.n_truncated.sum()[None]]
        n_tokens, sum_len_sq, n_image_tokens, n_truncated = torch.cat(counts).tolist()  # one read-back for all four
        stats = {
            "seq_len": mm.inputs_embeds.shape[1],
            "n_tokens": n_tokens,
            "n_images": int(mm.image_rows.numel()),
            "n_image_tokens": n_image_tokens,
            "n_supervised": ce_positions[2].numel(),  # where the LM head runs
            "sum_len_sq": sum_len_sq,  # sum over samples of len^2: the causal attention's work
        }
        decoder_kwargs = self.decoder_kwargs(mm)  # mask, positions or segment offsets
        out = self.llm.get_decoder()(
            inputs_embeds=mm.inputs_embeds,
            use_cache=False,
            run_vision=run_vision,
            **decoder_kwargs,
            **self.llm_kwargs(mm),
        )
        loss_ce, n_tok = causal_lm_loss(
            out.last_hidden_state,
            mm.labels,
            self.llm.get_output_embeddings(),
            positions=ce_positions,
            calls=head_calls,
        )
        unused = self._touch_unused(mm, run_vision or stats["n_image_tokens"] > 0)
        return EveOutput(
            loss=loss_ce + unused,
            loss_ce=loss_ce.detach(),
            loss_align=loss_ce.new_zeros((), dtype=torch.float32),
            n_ce_tokens=n_tok,
            n_align_images=0,
            n_truncated=n_truncated,
            stats=stats,
            terms=(loss_ce, unused),
        )

    def _touch_unused(self, mm: DecoderInputs, vision_ran: bool) -> torch.Tensor:
        """Zero-valued term over the vision parts when none of them ran, so that DDP sees every parameter.

        Under DeepSpeed ZeRO-3 this is not enough (a partitioned parameter read outside its module's forward is not
        gathered, and the other ranks' gathers in the vision modules find no partner): ``uniform_module_calls``.
        """
        zero = mm.inputs_embeds.new_zeros((), dtype=torch.float32)
        if vision_ran or not torch.is_grad_enabled():
            return zero
        params = [p for p in self.patch_embed.parameters() if p.requires_grad]
        params += [p for n, p in self.llm.named_parameters() if p.requires_grad and is_vision_parameter(n)]
        for p in params:
            zero = zero + p.sum() * 0.0
        return zero
