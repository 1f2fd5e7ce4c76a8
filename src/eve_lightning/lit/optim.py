"""Optimizer and schedule: AdamW over per-part parameter groups, warmup + cosine by optimizer step.

Each part (LLM, patch embedding, projector, aligner) has its own LR; norms, biases and learned tokens never decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# group name -> parameter-name prefix; everything else is "base" (the LLM)
GROUP_PREFIXES = {"patch_embed": "vlm.patch_embed.", "projector": "vlm.projector.", "aligner": "vlm.aligner."}


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower() or name.endswith("_token")


def param_groups(
    model: nn.Module, lr: float, group_lr: dict[str, float | None] | None = None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters.

    Args:
        model: EveWithTeacher.
        lr: base learning rate (LLM and anything not listed below).
        group_lr: optional LR per part ("patch_embed", "projector", "aligner"); None = base LR.
        weight_decay: applied to matrices only.

    Returns:
        Groups named "<part>" and "<part>/no_decay"; empty groups are left out.
    """
    group_lr = group_lr or {}
    unknown = set(group_lr) - set(GROUP_PREFIXES)
    if unknown:
        raise ValueError(f"optim.group_lr has unknown parts {sorted(unknown)}; use {sorted(GROUP_PREFIXES)}")
    buckets: dict[str, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = next((g for g, pre in GROUP_PREFIXES.items() if name.startswith(pre)), "base")
        key = f"{part}/no_decay" if _no_decay(name, p) else part
        buckets.setdefault(key, []).append(p)
    groups = []
    for key, params in sorted(buckets.items()):
        part = key.split("/")[0]
        part_lr = group_lr.get(part)
        groups.append(
            {
                "name": key,
                "params": params,
                "lr": lr if part_lr is None else part_lr,
                "weight_decay": 0.0 if key.endswith("/no_decay") else weight_decay,
            }
        )
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """LR multiplier per optimizer step: linear warmup from ~0 to 1, then cosine down to `min_ratio`."""
    if total_steps < 1:
        raise ValueError("the LR schedule needs trainer.max_steps >= 1")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: nn.Module,
    total_steps: int,
    lr: float,
    group_lr: dict[str, float | None] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_ratio: float = 0.03,
    min_lr_ratio: float = 0.0,
    fused: bool | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + warmup/cosine LambdaLR (stepped every optimizer step)."""
    groups = param_groups(model, lr, group_lr, weight_decay)
    if not groups:
        raise ValueError("no trainable parameter: check stage.trainable")
    kwargs = {"fused": fused} if fused is not None else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kwargs)
    warmup = math.ceil(warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup, min_lr_ratio))
    return opt, sched
