"""Factories that Hydra configs call: the training model (VLM + frozen teacher) and its parts."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eve_lightning.models.clip_teacher import ClipTeacher, build_teacher
from eve_lightning.models.eve_vlm import EveConfig, EveOutput, EveVLM
from eve_lightning.models.fp8 import FP8_ROW_MULTIPLE, convert_decoder_to_fp8
from eve_lightning.models.llm import build_llm
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def teacher_cell_mask(teacher_pixel_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Valid teacher cells: [N, S, S] pixel mask -> bool [N, (S/p)^2] (cells fully inside the band)."""
    pooled = F.avg_pool2d(teacher_pixel_mask.float().unsqueeze(1), patch_size)  # [N, 1, g, g]
    return (pooled >= 1.0).flatten(1)  # every pixel of the cell in the band


class EveWithTeacher(nn.Module):
    """The training model: EveVLM plus the frozen CLIP teacher that gives the alignment targets."""

    def __init__(self, vlm: EveVLM, teacher: ClipTeacher | None = None) -> None:
        super().__init__()
        self.vlm = vlm
        self.teacher = teacher

    def forward(self, batch: dict[str, torch.Tensor]) -> EveOutput:
        """Losses for a collated batch (keys of `eve_lightning.constants`)."""
        features = cell_mask = None
        packed = "seq_ids" in batch
        if self.teacher is not None and self.vlm.aligner is not None and "teacher_pixel_values" in batch:
            if packed:  # one teacher view per placeholder already, in placeholder order
                views, masks = batch["teacher_pixel_values"], batch.get("teacher_pixel_mask")
            else:
                rows = EveVLM.image_rows(batch["input_ids"], batch["attention_mask"])
                views = batch["teacher_pixel_values"][rows]
                masks = batch["teacher_pixel_mask"][rows] if "teacher_pixel_mask" in batch else None
            if views.shape[0]:
                features = self.teacher(views)  # [N, g_t^2, C]
                if masks is not None:
                    cell_mask = teacher_cell_mask(masks, self.vlm.config.teacher_patch_size)
        if features is None and self.teacher is not None and self.vlm.aligner is not None:
            if self.vlm.config.uniform_module_calls:  # ZeRO-3: the teacher's gathers must run on every rank
                side = self.teacher.clip.config.image_size
                self.teacher(batch["input_ids"].new_zeros((1, 3, side, side), dtype=torch.uint8))  # output unused
        return self.vlm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            pixel_values=batch.get("pixel_values"),
            pixel_mask=batch.get("pixel_mask"),
            teacher_features=features,
            teacher_cell_mask=cell_mask,
            position_ids=batch.get("position_ids") if packed else None,
            seq_ids=batch.get("seq_ids"),
        )


def build_eve_model(
    llm: dict[str, Any],
    eve: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
    fp8: str | None = None,
) -> EveWithTeacher:
    """Build VLM and (when the alignment loss is on) teacher from plain dicts.

    Args:
        llm: `build_llm` arguments (path | config, dtype, attn_implementation).
        eve: `EveConfig` fields. The teacher's width, image size and patch size are taken from the teacher.
        teacher: `build_teacher` arguments (path | config, select_layer, dtype); ignored when
            `eve.align_weight` is 0, in which case no teacher is built or loaded.
        fp8: a float8 recipe for the decoder blocks' linear layers (``models.fp8``: tensorwise | rowwise |
            rowwise_with_gw_hp), or None for none. Needs a GPU with FP8 tensor cores and torchao.
    """
    cfg = EveConfig(**(eve or {}))
    tmodel = None
    if cfg.align_weight > 0:
        if teacher is None:
            raise ValueError("model.align_weight > 0 needs a model.teacher (path or config); or set it to 0")
        tmodel = build_teacher(**teacher)
        tcfg = tmodel.clip.config
        cfg.teacher_hidden = tcfg.hidden_size
        cfg.teacher_image_size = tcfg.image_size
        cfg.teacher_patch_size = tcfg.patch_size
    decoder = build_llm(**llm)
    if fp8:
        n = convert_decoder_to_fp8(decoder, fp8)
        log.info("model.fp8=%s: %d decoder linear layers train in float8", fp8, n)
        cfg.pad_to_multiple_of = max(cfg.pad_to_multiple_of, FP8_ROW_MULTIPLE)
    return EveWithTeacher(EveVLM(decoder, cfg), tmodel)
