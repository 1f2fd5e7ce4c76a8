"""EveVLM: the decoder-only VLM (PEL -> projector -> token splice -> decoder LLM), with its training losses.

One forward serves training and inference prefill:
  * image tokens of every image row are computed in one batched PEL call and spliced at the row's
    IMAGE_TOKEN_INDEX placeholder (one image per row at most); rows are re-laid out with a cumulative-sum
    position map, then truncated to `max_length` *after* expansion (truncated tokens are counted);
  * the decoder runs once; hooks capture only the hidden states the aligner reads, only at image cells;
  * logits are computed only at supervised positions (never full-vocab logits for image tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, TEACHER_IMAGE_SIZE
from eve_lightning.models import attention
from eve_lightning.models.attention import Layout, LayoutViews, PackedLayout, PaddedLayout
from eve_lightning.models.image_inputs import select_canvases
from eve_lightning.models.llm import residual_dtype
from eve_lightning.models.losses import causal_lm_loss, cosine_alignment_loss, lm_head_calls, supervised_positions
from eve_lightning.models.patch_aligner import PatchAligner
from eve_lightning.models.patch_embedding import PatchEmbedding, token_layout
from eve_lightning.models.projector import Projector
from eve_lightning.utils.flops import sample_token_totals


@dataclass
class EveConfig:
    """Hyperparameters of the EVE parts around the LLM (the LLM keeps its own HF config).

    Attributes:
        image_size: EVE canvas side in px (672 or 1344).
        patch_size: conv patch in px (14).
        pool_stride: local-attention pooling window in patches (2).
        vision_hidden: PEL width (1024 in EVE-7B).
        vision_heads: heads of both PEL attentions (8).
        projector_type: "mlp2x_gelu".
        max_length: sequence cap after image expansion (2048; 4096 for HD SFT).
        align_weight: weight of the alignment loss; 0 builds no aligner (and the trainer no teacher).
        align_layer_interval: aligner reads every k-th hidden state from the top (4).
        align_heads: heads of the aligner's layer-wise cross-attention (8).
        teacher_hidden: teacher feature width (1024 for CLIP ViT-L).
        teacher_image_size: teacher view side in px (336).
        teacher_patch_size: teacher patch in px (14).
        check_alignment: verify per image that the aligned cells are exactly the teacher's valid cells.
        pad_to_multiple_of: expanded rows are padded to a multiple of this many tokens (16 under FP8, whose
            matmuls take whole blocks of 16 rows); padding is masked and never supervised.
        ce_impl: how the LM head and the CE loss run: "torch" (logits per chunk), "fused" or "liger" (one pass
            keeping no logits, ``models.fused_ce``); the same loss.
        autocast_residual: the decoder's input embeddings, and with them its residual stream, take the autocast
            dtype (bf16 under ``precision=bf16-mixed``) instead of the weights' float32 (``llm.residual_dtype``).
        uniform_module_calls: every loss forward (``forward``: training and validation steps, with or without gradients)
            calls every vision module, in the order a batch with images and teacher features calls them: without an
            image the patch embedding and the projector run on zero images (their empty output spliced like image
            tokens), and without alignment the aligner runs on zero cells. Needed under DeepSpeed ZeRO-3, which gathers
            a module's parameters with a collective of all ranks when the module is called: a rank whose micro-batch
            holds no image would otherwise skip gathers the others wait in. Losses and gradients are the same either way
            (the skipped parts get exact zero gradients from the empty calls instead of the zero-valued term over their
            parameters). The LM head is called as often on every rank (``losses.causal_lm_loss``'s
            ``lm_head_calls``), and the training wrapper runs the frozen CLIP teacher on one blank view when no
            image has one (``build.EveWithTeacher``). Generation (``prepare_inputs`` + ``llm``) is not affected. Set
            by the LightningModule under DeepSpeed ZeRO-3.
    """

    image_size: int = 672
    patch_size: int = 14
    pool_stride: int = 2
    vision_hidden: int = 1024
    vision_heads: int = 8
    projector_type: str = "mlp2x_gelu"
    max_length: int = 2048
    align_weight: float = 1.0
    align_layer_interval: int = 4
    align_heads: int = 8
    teacher_hidden: int = 1024
    teacher_image_size: int = TEACHER_IMAGE_SIZE
    teacher_patch_size: int = 14
    check_alignment: bool = True
    ce_impl: str = "torch"
    autocast_residual: bool = False
    pad_to_multiple_of: int = 1
    uniform_module_calls: bool = False

    @property
    def canvas_grid(self) -> int:
        return self.image_size // (self.patch_size * self.pool_stride)

    @property
    def teacher_grid(self) -> int:
        return self.teacher_image_size // self.teacher_patch_size

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MultimodalInputs(LayoutViews):
    """Decoder inputs after image expansion (right-padded unless asked otherwise).

    Attributes:
        inputs_embeds: [B, L', H].
        layout: the rows' attention layout: ``PaddedLayout`` (one sample per row) or ``PackedLayout`` (several);
            ``layout.decoder_kwargs(backend)`` gives the decoder's mask, positions and segment arguments.
        labels: [B, L'] or None.
        image_rows: [N] batch row of each image.
        cell_rows, cell_pos: [M] row and sequence position of every image cell token of a complete image.
        cell_teacher: [M] teacher cell id (image * g_t^2 + row * g_t + col) of those tokens.
        n_truncated: tokens dropped by the max-length cap, per row [B].
    """

    inputs_embeds: torch.Tensor
    layout: Layout
    labels: torch.Tensor | None
    image_rows: torch.Tensor
    cell_rows: torch.Tensor
    cell_pos: torch.Tensor
    cell_teacher: torch.Tensor
    n_truncated: torch.Tensor


@dataclass
class EveOutput:
    """Losses and counters of one forward."""

    loss: torch.Tensor
    loss_ce: torch.Tensor
    loss_align: torch.Tensor
    n_ce_tokens: int
    n_align_images: int
    n_truncated: int
    stats: dict = field(default_factory=dict)
    terms: tuple[torch.Tensor, torch.Tensor] | None = None  # (CE, weighted alignment), with their graphs


class EveVLM(nn.Module):
    """Encoder-free VLM around an HF causal LM."""

    def __init__(self, llm: PreTrainedModel, config: EveConfig | dict | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, EveConfig) else EveConfig(**(config or {}))
        if cfg.canvas_grid % cfg.teacher_grid:
            raise ValueError(
                f"canvas token grid {cfg.canvas_grid} (image_size {cfg.image_size}) is not a multiple of the "
                f"teacher grid {cfg.teacher_grid}; use image_size 672 or 1344"
            )
        self.config = cfg
        self.llm = llm
        llm_hidden = llm.config.hidden_size
        self.patch_embed = PatchEmbedding(cfg.vision_hidden, cfg.vision_heads, cfg.patch_size, cfg.pool_stride)
        self.projector = Projector(cfg.vision_hidden, llm_hidden, cfg.projector_type)
        self.aligner = None
        if cfg.align_weight > 0:
            self.aligner = PatchAligner(
                llm_hidden,
                cfg.teacher_hidden,
                llm.config.num_hidden_layers,
                cfg.align_layer_interval,
                cfg.align_heads,
            )

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def image_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rows of `input_ids` [B, L] that hold an image placeholder on a real token, in row order."""
        return ((input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()).any(1).nonzero().flatten()

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
    ) -> MultimodalInputs:
        """Expand image placeholders into image tokens and re-lay the rows out.

        Args:
            input_ids: [B, L] with at most one IMAGE_TOKEN_INDEX per row (padded layout) or per sample (packed
                layout); padding anywhere is allowed.
            attention_mask: [B, L] True/1 on real tokens.
            pixel_values: uint8 [B, 3, S, S] indexed by row (padded; rows without a placeholder are ignored), or
                [N, 3, S, S] with one canvas per placeholder in row-major order (packed).
            pixel_mask: [B, S, S] or [N, S, S], like `pixel_values`.
            labels: [B, L] or None.
            max_length: cap after expansion (default `config.max_length`; packed rows are never cut).
            pad_side: "right" (training) or "left" (batched generation).
            position_ids: packed rows: [B, L] positions in expanded coordinates, restarting per sample.
            seq_ids: packed rows: [B, L] sample index within the row (-1 on padding); selects the packed layout.
            run_vision: without a placeholder, still run the patch embedding and the projector, on zero images, and
                splice their empty output (``EveConfig.uniform_module_calls``).
        """
        bsz = input_ids.shape[0]
        device = input_ids.device
        packed = seq_ids is not None
        max_length = 10**9 if packed else (max_length or self.config.max_length)
        embed = self.llm.get_input_embeddings()
        real = attention_mask.bool()
        found = select_canvases(input_ids, attention_mask, pixel_values, pixel_mask, packed)
        is_img, rows, starts = found.is_img, found.rows, found.cols  # [B, L]; [N], [N] in row-major order
        pix, pmask = found.pixels, found.mask

        img_len = torch.zeros_like(input_ids)  # [B, L] image tokens at each placeholder
        image_tokens = None
        if not rows.numel() and run_vision:  # no image: zero canvases, so that every [T] and [M] tensor below is empty
            pix, pmask = self._no_images(device)
        if rows.numel() or run_vision:
            image = self.patch_embed(pix, pmask)
            image_tokens = self.projector(image.tokens)  # [T, H]
            img_len[rows, starts] = image.lengths

        width = torch.where(is_img, img_len, 1) * real  # [B, L] positions each token takes
        dst = torch.cumsum(width, 1) - width  # [B, L] first destination of each token
        new_len = width.sum(1)  # [B]
        out_len = int(min(int(new_len.max()) if bsz else 0, max_length))
        kept_len = new_len.clamp(max=out_len)  # [B]
        multiple = self.config.pad_to_multiple_of
        out_len = -(-out_len // multiple) * multiple  # whole blocks of rows (FP8 matmuls); the rest is padding
        shift = (out_len - kept_len)[:, None] if pad_side == "left" else 0
        dst = dst + shift
        end = kept_len[:, None] + shift  # [B, 1] first slot past each row's kept tokens

        text = real & ~is_img & (dst < end)
        t_rows, t_cols = text.nonzero(as_tuple=True)
        hidden = self.llm.config.hidden_size  # (weight shapes are empty under ZeRO-3 partitioning)
        dtype = residual_dtype(embed.weight.dtype, device, self.config.autocast_residual)
        embeds = embed.weight.new_zeros(bsz, out_len, hidden, dtype=dtype)
        text_emb = embed(input_ids[t_rows, t_cols]).to(dtype)  # [K, H]
        embeds = embeds.index_put((t_rows, dst[t_rows, t_cols]), text_emb)
        new_labels = None
        if labels is not None:
            new_labels = torch.full((bsz, out_len), IGNORE_INDEX, dtype=labels.dtype, device=device)
            new_labels[t_rows, dst[t_rows, t_cols]] = labels[t_rows, t_cols]
        new_pos = new_seq = None
        if packed:
            new_pos = torch.zeros(bsz, out_len, dtype=torch.long, device=device)
            new_seq = torch.full((bsz, out_len), -1, dtype=torch.long, device=device)
            new_pos[t_rows, dst[t_rows, t_cols]] = position_ids[t_rows, t_cols]
            new_seq[t_rows, dst[t_rows, t_cols]] = seq_ids[t_rows, t_cols]

        empty = torch.zeros(0, dtype=torch.long, device=device)
        cell_rows = cell_pos = cell_teacher = empty
        if image_tokens is not None:
            lay = token_layout(image.grids, image.lengths, image.canvas_grid)
            tok_row = rows[lay["image"]]  # [T]
            tok_pos = dst[rows, starts][lay["image"]] + lay["offset"]  # [T]
            keep = tok_pos < end[tok_row, 0]
            embeds = embeds.index_put((tok_row[keep], tok_pos[keep]), image_tokens[keep].to(embeds.dtype))
            if packed:  # image tokens continue the placeholder's position and belong to its sample
                first_pos = position_ids[rows, starts][lay["image"]]  # [T]
                new_pos[tok_row, tok_pos] = first_pos + lay["offset"]
                new_seq[tok_row, tok_pos] = seq_ids[rows, starts][lay["image"]]
            complete = dst[rows, starts] + image.lengths <= end[rows, 0]  # [N] whole image inside the cap
            is_cell = ~lay["is_cls"] & ~lay["is_spl"] & complete[lay["image"]]
            g, gt = image.canvas_grid, self.config.teacher_grid
            ratio = g // gt
            cell = lay["cell"][is_cell]
            cell_teacher = lay["image"][is_cell] * gt * gt + (cell // g // ratio) * gt + (cell % g) // ratio
            cell_rows, cell_pos = tok_row[is_cell], tok_pos[is_cell]

        pos = torch.arange(out_len, device=device)[None, :]  # [1, L']
        if packed:
            layout: Layout = PackedLayout(seq_ids=new_seq, position_ids=new_pos)
        elif pad_side == "left":
            start = out_len - kept_len[:, None]
            layout = PaddedLayout(attention_mask=pos >= start, position_ids=(pos - start).clamp(min=0))
        else:
            layout = PaddedLayout(attention_mask=pos < kept_len[:, None], position_ids=pos.expand(bsz, -1))
        return MultimodalInputs(
            inputs_embeds=embeds,
            layout=layout,
            labels=new_labels,
            image_rows=rows,
            cell_rows=cell_rows,
            cell_pos=cell_pos,
            cell_teacher=cell_teacher,
            n_truncated=new_len - kept_len,
        )

    def _no_images(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty batch of canvases one token cell wide: uint8 [0, 3, c, c] pixels and [0, c, c] masks."""
        c = self.config.patch_size * self.config.pool_stride
        pixels = torch.zeros(0, 3, c, c, dtype=torch.uint8, device=device)
        return pixels, pixels[:, 0]

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
        """Training forward: CE (+ alignment) losses.

        Args:
            input_ids: [B, L], see `prepare_inputs`.
            attention_mask: [B, L].
            labels: [B, L].
            pixel_values: uint8 [B, 3, S, S].
            pixel_mask: [B, S, S].
            teacher_features: [N, g_t^2, C] teacher patch features of the N image rows (in row order), or None
                to skip the alignment loss.
            teacher_cell_mask: optional bool [N, g_t^2], the teacher's valid cells, checked against the aligned
                cells when `config.check_alignment`.
            position_ids: packed layout only, see `prepare_inputs`.
            seq_ids: packed layout only; attention then stays inside each packed sample.
        """
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
        use_align = self.aligner is not None and teacher_features is not None
        # Everything that reads a count back from the device happens here, before the decoder is queued: after
        # it, each read-back would hold the host until the whole decoder forward has run, and the GPU would then
        # wait for the host to queue the losses and the backward.
        ce_positions = supervised_positions(mm.labels)
        head_calls = lm_head_calls(ce_positions[2].numel(), mm.labels.device) if run_vision else None  # ZeRO-3
        cell_rows, cell_pos, cell_teacher = mm.cell_rows, mm.cell_pos, mm.cell_teacher  # [M] each: the aligned cells
        align = None
        if use_align and mm.cell_rows.numel():
            groups = self.aligner.group_cells(cell_teacher)  # (cells [P], inverse [M])
            images, image_index = torch.unique(groups[0] // self.config.teacher_grid**2, return_inverse=True)
            if self.config.check_alignment and teacher_cell_mask is not None:
                self._check_cells(groups[0], images, teacher_cell_mask)
            align = (groups, image_index, int(images.numel()))
        elif run_vision and self.aligner is not None:  # no alignment in this step: the aligner runs on zero cells
            cell_rows, cell_pos, cell_teacher = cell_rows[:0], cell_pos[:0], cell_teacher[:0]
            align = ((cell_teacher, cell_teacher), cell_teacher, 0)  # no cell, no group, no image
        counts = torch.cat([sample_token_totals(mm.layout.seq_ids), mm.n_truncated.sum()[None]])
        n_tokens, sum_len_sq, n_truncated = counts.tolist()  # one read-back for the three
        stats = {
            "seq_len": mm.inputs_embeds.shape[1],
            "n_tokens": n_tokens,
            "n_images": int(mm.image_rows.numel()),
            "n_supervised": ce_positions[2].numel(),  # where the LM head runs
            "sum_len_sq": sum_len_sq,  # sum over samples of len^2: the causal attention's work
        }
        decoder_kwargs = mm.layout.decoder_kwargs(attention.backend_of(self.llm))  # mask or segment offsets

        captured: dict[int, torch.Tensor] = {}
        handles = self._capture_hooks(cell_rows, cell_pos, captured) if align is not None else []
        try:
            decoder = self.llm.get_decoder()
            out = decoder(inputs_embeds=mm.inputs_embeds, use_cache=False, **decoder_kwargs)
        finally:
            for h in handles:
                h.remove()
        last = out.last_hidden_state  # [B, L', H], final-norm output
        loss_ce, n_tok = causal_lm_loss(
            last,
            mm.labels,
            self.llm.get_output_embeddings(),
            positions=ce_positions,
            impl=self.config.ce_impl,
            calls=head_calls,
        )

        loss_align = last.new_zeros((), dtype=torch.float32)
        n_align = 0
        if align is not None:
            groups, image_index, n_align = align
            top = self.aligner.layer_indices[0]
            captured[top] = last[cell_rows, cell_pos]
            captured[0] = mm.inputs_embeds[cell_rows, cell_pos]
            layers = [captured[i] for i in self.aligner.layer_indices]
            pred, cells = self.aligner(layers, cell_teacher, groups)  # [P, C], [P]
            if n_align:
                target = teacher_features.reshape(-1, teacher_features.shape[-1])[cells]  # [P, C]
                loss_align = cosine_alignment_loss(pred, target.to(pred.dtype), image_index, n_align)
            else:  # zero cells (uniform_module_calls): an exact 0 that keeps the aligner's graph
                loss_align = (pred.sum() * 0.0).float()

        # with uniform_module_calls every part ran (on empty inputs when unused): nothing is left to touch
        unused = loss_align.new_zeros(()) if run_vision else self._touch_unused(mm, n_align > 0)
        align_term = self.config.align_weight * loss_align + unused
        loss = loss_ce + align_term
        return EveOutput(
            loss=loss,
            loss_ce=loss_ce.detach(),
            loss_align=loss_align.detach(),
            n_ce_tokens=n_tok,
            n_align_images=n_align,
            n_truncated=n_truncated,
            stats=stats,
            terms=(loss_ce, align_term),
        )

    def _capture_hooks(self, rows: torch.Tensor, pos: torch.Tensor, store: dict[int, torch.Tensor]) -> list:
        """Forward hooks keeping decoder-layer outputs at the cells (rows, pos: [M]) for the aligner's inner layers."""
        layers = self.llm.get_decoder().layers
        wanted = [i for i in self.aligner.layer_indices if 0 < i < len(layers)]

        def make(index: int):
            def hook(_module, _args, output):
                hidden = output[0] if isinstance(output, tuple) else output  # [B, L', H]
                if index not in store:  # activation-checkpoint recomputation must not overwrite
                    store[index] = hidden[rows, pos]  # [M, H]

            return hook

        # hidden_states[i] is the output of decoder layer i-1 (0-based)
        return [layers[i - 1].register_forward_hook(make(i)) for i in wanted]

    def _check_cells(self, cells: torch.Tensor, images: torch.Tensor, teacher_cell_mask: torch.Tensor) -> None:
        gt2 = self.config.teacher_grid**2
        expected = teacher_cell_mask.reshape(-1, gt2)[images].nonzero()  # [P', 2] (image slot, cell)
        expected_ids = images[expected[:, 0]] * gt2 + expected[:, 1]
        if expected_ids.shape != cells.shape or not torch.equal(expected_ids, cells):
            raise ValueError(
                "aligned image cells differ from the teacher's valid cells: the EVE view and the teacher view "
                "were not preprocessed from the same image geometry (see eve_lightning.data preprocessing)"
            )

    def _touch_unused(self, mm: MultimodalInputs, aligned: bool) -> torch.Tensor:
        """Zero-valued term over parts that took no part in this step, so that DDP sees every parameter.

        Under DeepSpeed ZeRO-3 this is not enough (a partitioned parameter read outside its module's forward is not
        gathered, and the other ranks' gathers in those modules find no partner): ``uniform_module_calls``.
        """
        unused: list[nn.Module] = []
        if not mm.image_rows.numel():
            unused += [self.patch_embed, self.projector]
        if self.aligner is not None and not aligned:
            unused.append(self.aligner)
        zero = mm.inputs_embeds.new_zeros((), dtype=torch.float32)
        for module in unused:
            for p in module.parameters():
                if p.requires_grad:
                    zero = zero + p.sum() * 0.0
        return zero
