"""DeepSpeed ZeRO-3 steps of a tiny VLM on 2 CPU ranks (gloo): one rank's batch holds an image, the other's none.

Run one process per rank: ``python tests/helpers/zero3_imageless.py FAMILIES RANK WORLD PORT on|off [OUT]`` with
FAMILIES ``evev2``, ``eve`` (v1 with an aligner; rank 0 passes teacher features, the teacher itself is left out) or
both, comma-separated (one engine after the other). Each engine takes two steps; in step s the batch of rank s holds an
image and every other rank's is text-only (the second step runs with the module trace DeepSpeed recorded in the
first, which drives its prefetching). ``on`` sets the model's ``uniform_module_calls``, so every rank calls the vision
modules (on zero images, zero image tokens, zero aligned cells where it has none) and the parameter gathers of
ZeRO-3 meet. After each step every rank prints one JSON line
``{"family": ..., "step": ..., "rank": ..., "loss": ..., "n_images": ...}``. With OUT, rank 0 also saves the whole
weights after the first step (an SGD step, so they show the averaged gradients) as OUT/FAMILY-step0.pt.

``evev2_lm`` is the tiny EVEv2 on text only, with 2 x 2100 supervised tokens on rank ``step`` (two chunks of the LM
head's 4096 positions) and 2 x 150 elsewhere (one chunk): the LM head must be called as often on every rank.

Every parameter is partitioned (``stage3_param_persistence_threshold`` 0): at its default DeepSpeed keeps the small
parameters of a tiny model whole on every rank and never gathers them, which would hide the problem.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from datetime import timedelta

import torch
from torch import nn

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

VOCAB = 512  # small embeddings: cheap partitions on CPU
LENGTH = 12  # text tokens per row
LM_LENGTH = {True: 2100, False: 150}  # evev2_lm: tokens per row, all supervised, on the long rank and the others
SIDE = {"evev2": 64, "eve": 112}  # canvas px: 2 x 2 cells of 32 px (EVEv2), 4 x 4 cells of 28 px (EVE v1)
TEACHER_GRID, TEACHER_WIDTH = 4, 16  # v1: teacher cells per side of a 56-px view (14-px patches), feature width
LR = 0.1  # SGD: the weights after one step are the initial ones minus LR x the gradient averaged over the ranks


def tiny_vlm(family: str, uniform_module_calls: bool) -> nn.Module:
    """A tiny EveV2VLM (2 layers, width 32, every vision copy) or EveVLM (2 layers, width 32, with an aligner)."""
    llm = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)  # the same initial weights on every rank
    llm["max_position_embeddings"] = 4096
    if family in ("evev2", "evev2_lm"):
        from eve_lightning.models.evev2 import build_evev2_model

        eve = dict(image_size=SIDE["evev2"], vision_hidden=16, uniform_module_calls=uniform_module_calls)
        return build_evev2_model(dict(config=llm, attn_implementation="sdpa"), eve).vlm
    from eve_lightning.models.eve_vlm import EveConfig, EveVLM
    from eve_lightning.models.llm import build_llm

    cfg = EveConfig(image_size=SIDE[family], vision_hidden=16, vision_heads=4, align_layer_interval=1, align_heads=4,
                    teacher_hidden=TEACHER_WIDTH, teacher_image_size=56, check_alignment=False,
                    uniform_module_calls=uniform_module_calls)  # fmt: skip
    return EveVLM(build_llm(config=dict(model_type="llama", **llm), attn_implementation="sdpa"), cfg)


def batch(family: str, rank: int, step: int = 0) -> dict[str, torch.Tensor]:
    """Two padded rows; on rank ``step`` the first holds an image placeholder (and v1 teacher features), else none."""
    gen = torch.Generator().manual_seed(rank + 10 * step)
    if family == "evev2_lm":  # text only; the rank of this step has two LM-head chunks of supervised tokens
        ids = torch.randint(3, VOCAB, (2, LM_LENGTH[rank == step]), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": ids.clone()}
    side = SIDE[family]
    image = rank == step
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=gen)
    if image:
        ids[0, 1] = IMAGE_TOKEN_INDEX
    labels = torch.where(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX, ids)
    labels[:, : LENGTH // 2] = IGNORE_INDEX  # the first half of each row is the prompt
    mask = torch.zeros(2, side, side, dtype=torch.uint8)
    mask[0] = int(image)  # the image fills its canvas; text-only rows carry an empty one
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "labels": labels,
        "pixel_values": torch.randint(0, 256, (2, 3, side, side), generator=gen, dtype=torch.uint8),
        "pixel_mask": mask,
    }
    if family == "eve" and image:
        out["teacher_features"] = torch.randn(1, TEACHER_GRID**2, TEACHER_WIDTH, generator=gen)
    return out


class Step(nn.Module):
    """What the engine wraps: the VLM, with a forward that returns the loss."""

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.vlm(**batch).loss


def main(families: str, rank: int, world: int, port: str, option: str, out: str | None = None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port, DS_ACCELERATOR="cpu")  # fmt: skip
    import deepspeed

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # a CPU op: nothing to build
    deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(minutes=5))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed clips to norm 1 unless told otherwise
    }
    for family in families.split(","):
        vlm = tiny_vlm(family, option == "on")
        optimizer = torch.optim.SGD(vlm.parameters(), lr=LR)  # a torch optimizer: no DeepSpeed op to build
        engine, *_ = deepspeed.initialize(model=Step(vlm), optimizer=optimizer, config=config)
        for step in range(2):
            data = batch(family, rank, step)
            loss = engine(**data)
            engine.backward(loss)
            engine.step()
            n_images = int((data["input_ids"] == IMAGE_TOKEN_INDEX).sum())
            report = {"family": family, "step": step, "rank": rank, "loss": loss.item(), "n_images": n_images}
            print(json.dumps(report), flush=True)
            if out is not None and step == 0:
                with deepspeed.zero.GatheredParameters(list(vlm.parameters())):  # every rank gathers, rank 0 saves
                    if rank == 0:
                        weights = {n: p.detach().clone() for n, p in vlm.named_parameters()}
                        torch.save(weights, os.path.join(out, f"{family}-step0.pt"))
        torch.distributed.barrier()
        engine.destroy()
    # a rank that exits with its process group alive can abort in the backend's threads: take it down first
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], *sys.argv[6:7])
