"""The memory model applied to an ``eve_lightning.bench.train`` run, to check it against the run's measured peak.

The activation factors of ``planner.memory`` were calibrated on such runs (``benchmarks/results``); rebuilding a
run's step here lets the tests compare every committed run's peak with the model.
"""

from __future__ import annotations

from typing import Any

import torch

from eve_lightning.data.geometry import max_image_tokens
from eve_lightning.models import attention
from eve_lightning.models.shapes import build_random_model
from eve_lightning.planner.memory import DecoderShape, MemoryPlan, Workload, activations, model_states
from eve_lightning.planner.throughput import MEASURED_IMAGE_SIZE


def bench_step_memory(result: dict[str, Any]) -> MemoryPlan:
    """The memory model of an ``eve_lightning.bench.train`` run of our path (its JSON), to check against its peak.

    That benchmark keeps float32 trained weights under bf16 autocast, a bf16 frozen decoder for prealign, a bf16
    teacher, fused AdamW, and a copy of the initial state dict on the GPU (to restart each path from the same
    weights); its rows are packed, without checkpointing. ``compile_ours`` selects the compiled blocks' activation
    factors.
    """
    with torch.device("meta"):
        model = build_random_model(result["model"], result["workload"], torch.device("meta"), attention.SDPA)
    params = list(model.parameters())
    trained = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    frozen_bytes = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    ours = result["paths"]["ours"]
    shape = DecoderShape.from_hf(model.vlm.llm.config)
    share = 0.95 if result["workload"] == "sft" else 1.0
    work = Workload(
        micro_batch=int(result["micro_batch"]),
        tokens_per_sample=ours["tokens_per_s"] / ours["samples_per_s"],
        images_per_sample=share,
        patches_per_image=48 * 48,
        image_tokens_per_image=max_image_tokens(MEASURED_IMAGE_SIZE["eve"]),
        vision_width=model.vlm.config.vision_hidden,
        compiled=bool(result.get("compile_ours")),
    )
    parts = model_states(
        trained, frozen, weight_bytes=4, frozen_weight_bytes=2, strategy="ddp", n_gpus=1, autocast_copies=True
    )
    parts["weights (frozen)"] = frozen_bytes
    parts["initial state-dict copy (benchmark)"] = trained * 4 + frozen_bytes
    parts |= activations(
        shape, work, trained=result["workload"] != "prealign", align_layers=len(model.vlm.aligner.layer_indices)
    )
    return MemoryPlan(parts)
