"""Training-step benchmark: our path against the original EVE code's way of computing the same step.

`python -m eve_lightning.bench.train --model eve_1b --workload sft [--paths ours,reference] [--out FILE]` builds a
model with random weights (decoder of TinyLlama-1.1B or Vicuna-7B shape, EVE patch embedding and aligner, a CLIP
ViT-L/14-336-shaped teacher), draws synthetic samples with realistic lengths, and times steady-state optimizer
steps of each path in the same process on the same GPU:

* `reference`: the original's computation: right padding to the longest sample, the patch embedding and the
  aligner run sample by sample, every hidden state of the decoder kept, full-vocabulary logits at every position,
  activation checkpointing on;
* `ours`: the batched patch embedding and aligner, samples packed into rows up to a token budget with attention
  kept inside each sample (flash-attention varlen when installed, else a block-diagonal mask), hidden states
  captured only at the aligner's layers and image cells, logits only at supervised positions, no checkpointing.

Both paths see the same samples per step and start from the same weights; the first step's losses are compared.

EVEv2 models (`--model evev2_1b | evev2_7b`, or an EVEv2 model config file) have no teacher, projector or aligner:
their samples follow EVEv2's image geometry (area about the model's `image_size` squared, 32-px cells:
`planner.throughput.evev2_sample_geometry`), rectangular canvases of the batch's bands, and the default paths are
`ours` (routed: each token through its own weights) and `dense` (the same weights and packed rows with
`routing="dense"`, the original's compute-both-and-blend). The reference path runs without the aligner and the
teacher when the model has none. An EVEv2 decoder's FLOPs are counted as routed: a token runs one branch (text or
vision weights, the same count), so the vision copies are not added, and the dense path's MFU, over the same
useful FLOPs, shows what computing both branches wastes.
Both share the teacher, which runs CLIP only up to the distilled layer (the original also computes the last of
CLIP ViT-L's 24 layers and discards it: the reference path is spared that 1/24 of the teacher). With ``--compile``
our path also compiles the teacher's encoder blocks (``--no-compile-teacher``: the decoder blocks only).
Decoder MFU (``mfu``) counts the useful FLOPs: 6 x decoder parameters (without the input embedding and the LM head)
x real tokens, 6 x the LM head's parameters x supervised positions (positions whose next label is supervised, where
our path computes logits; a tied head counts too), plus causal attention 6 x layers x width x sum(len^2) per sample
(4x parameters and 4x attention for a frozen decoder, whose weights get no gradient), over 989 TFLOP/s (H100 SXM
dense bf16); every path is measured against that same count. ``mfu_head_every_token`` counts the LM head at every
token, the convention of the JSONs written before 2026-12-05's change (they have only ``mfu``), to compare with
them. Teacher and patch embedding are not counted in the MFU;
their forward time (teacher, patch embedding + projector) is reported as a share of the step (``teacher_pel_share``;
the patch embedding's backward is not in it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eve_lightning.constants import BACKGROUND_RGB, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.collate import pack_balanced, pack_first_fit
from eve_lightning.data.geometry import band_geometry
from eve_lightning.models import attention
from eve_lightning.models.build import EveWithTeacher, teacher_cell_mask
from eve_lightning.models.checkpointing import enable_checkpointing
from eve_lightning.models.compile import compile_decoder_layers, compile_layers, decoder_layers, is_checkpointed
from eve_lightning.models.evev2 import EveV2VLM
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.fp8 import AMAX_MODES as FP8_AMAX_MODES
from eve_lightning.models.fp8 import FP8_ROW_MULTIPLE, convert_decoder_to_fp8
from eve_lightning.models.fp8 import RECIPES as FP8_RECIPES
from eve_lightning.models.fused_ce import CE_IMPLS
from eve_lightning.models.losses import cosine_alignment_loss
from eve_lightning.models.shapes import MODEL_NAMES, build_random_model
from eve_lightning.planner.throughput import ASPECTS, evev2_sample_geometry
from eve_lightning.utils.flops import decoder_params

PEAK_TFLOPS = 989.0


class ForwardTimer:
    """Time spent in the forward passes of some modules during a step (summed over calls; CUDA events on GPU).

    Args:
        modules: name -> module; a module called several times per step (the reference path's per-sample patch
            embedding) adds up.
    """

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        modules = {name: m for name, m in modules.items() if m is not None}  # e.g. no teacher when align_weight=0
        self.spans: dict[str, list[list[Any]]] = {name: [] for name in modules}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._mark(n, start=True)))
            self.handles.append(module.register_forward_hook(lambda m, a, o, n=name: self._mark(n, start=False)))

    @staticmethod
    def _now() -> Any:
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _mark(self, name: str, start: bool) -> None:
        if start:
            self.spans[name].append([self._now(), None])
        else:
            self.spans[name][-1][1] = self._now()

    def reset(self) -> None:
        for spans in self.spans.values():
            spans.clear()

    def seconds(self) -> dict[str, float]:
        """Seconds per module since the last reset (synchronizes the device); 0 for modules not timed."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            span = lambda a, b: a.elapsed_time(b) / 1000  # noqa: E731
        else:
            span = lambda a, b: b - a  # noqa: E731
        out = {name: sum(span(a, b) for a, b in spans if b is not None) for name, spans in self.spans.items()}
        return defaultdict(float, out)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------------- samples
def sample_tokens(sample: dict[str, Any]) -> int:
    """Decoder tokens of a ``draw_samples`` sample: its text, and its image tokens in place of the placeholder."""
    return len(sample["ids"]) - 1 + (sample["geom"].num_image_tokens if sample["geom"] is not None else 1)


def supervised_count(sample: dict[str, Any]) -> int:
    """Supervised positions of a sample: those whose next label is supervised, where the LM head runs."""
    return int((sample["labels"][1:] != IGNORE_INDEX).sum())


def draw_samples(
    workload: str, n: int, rng: np.random.Generator, family: str = "eve", image_size: int = 800
) -> list[dict[str, Any]]:
    """Synthetic samples: text ids, labels, image placeholder, canvas geometry.

    Pretraining: one image + a 60-200 token caption. SFT: LLaVA-665K-like lengths (log-normal around 150
    tokens, 20-1500), ~5% text-only, about half the tokens supervised. EVE v1 images are placed on 672 px canvases;
    EVEv2 images (``family="evev2"``) follow EVEv2's geometry at ``image_size`` px (the same random draws).
    """
    out = []
    for _ in range(n):
        has_image = workload != "sft" or rng.random() > 0.05
        if workload == "sft":
            length = int(np.clip(rng.lognormal(math.log(150), 0.7), 20, 1500))
        else:
            length = int(rng.integers(60, 201))
        ids = rng.integers(3, 32000, size=length + 2)
        ids[0] = 1
        labels = np.full_like(ids, IGNORE_INDEX)
        start = 2 if workload != "sft" else length // 2
        labels[start:] = ids[start:]
        geom = None
        if has_image:
            ids[1] = IMAGE_TOKEN_INDEX
            w, h = ASPECTS[int(rng.integers(len(ASPECTS)))]
            geom = band_geometry(w * 300, h * 300, 672) if family == "eve" else evev2_sample_geometry(w, h, image_size)
        out.append({"ids": ids, "labels": labels, "geom": geom, "seed": int(rng.integers(2**31))})
    return out


def _views(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """uint8 canvases and band masks of the samples with an image (pixels: a function of the sample's seed).

    EVE v1: 672 px canvases and 336 px teacher views. EVEv2 (bands without a teacher view): one rectangular canvas
    size for the batch, its tallest band x its widest band (``data.canvas=rect``), no teacher views.
    """
    ev, em, tv, tm = [], [], [], []
    boxes = [s["geom"].eve for s in samples if s["geom"] is not None]
    v2 = any(not hasattr(s["geom"], "teacher") for s in samples if s["geom"] is not None)
    eve_hw = (max(b.y1 for b in boxes), max(b.x1 for b in boxes)) if v2 else (672, 672)
    for s in samples:
        g = s["geom"]
        if g is None:
            continue
        rng = np.random.default_rng(s["seed"])
        views = ((eve_hw, g.eve, ev, em),) if v2 else ((eve_hw, g.eve, ev, em), ((336, 336), g.teacher, tv, tm))
        for (height, width), box, pix, mask in views:
            canvas = np.empty((3, height, width), np.uint8)
            canvas[:] = np.asarray(BACKGROUND_RGB, np.uint8)[:, None, None]
            m = np.zeros((height, width), np.uint8)
            canvas[:, box.y0 : box.y0 + box.height, box.x0 : box.x0 + box.width] = rng.integers(
                0, 256, (3, box.height, box.width), dtype=np.uint8
            )
            m[box.y0 : box.y0 + box.height, box.x0 : box.x0 + box.width] = 1
            pix.append(torch.from_numpy(canvas))
            mask.append(torch.from_numpy(m))
    keys = ("pixel_values", "pixel_mask", "teacher_pixel_values", "teacher_pixel_mask")
    return {k: torch.stack(v) if v else torch.zeros(0) for k, v in zip(keys, (ev, em, tv, tm))}


def padded_batch(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The original's layout: one sample per row, right padding; every row carries a canvas (zeros if none)."""
    length = max(len(s["ids"]) for s in samples)
    b = len(samples)
    ids = torch.zeros(b, length, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.from_numpy(s["ids"]), torch.from_numpy(s["labels"]), True
    views = _views(samples)
    full = {k: torch.zeros((b, *v.shape[1:]), dtype=v.dtype) for k, v in views.items() if v.numel()}
    rows = [i for i, s in enumerate(samples) if s["geom"] is not None]
    for k, v in views.items():
        if v.numel():
            full[k][rows] = v
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, **full}


def packed_batch(samples: list[dict[str, Any]], budget: int, balanced: bool = False) -> dict[str, torch.Tensor]:
    """Our layout: samples packed into rows of at most `budget` expanded tokens.

    Rows are filled first-fit, or with `balanced` spread evenly over the same number of rows (the training
    collator's layout). The decoder sees every row as long as the longest row's real expanded tokens, so a
    balanced layout computes less padding.
    """
    exp = [len(s["ids"]) - 1 + s["geom"].num_image_tokens if s["geom"] else len(s["ids"]) for s in samples]
    rows = (pack_balanced if balanced else pack_first_fit)(exp, budget)
    length = max(sum(len(samples[i]["ids"]) for i in r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    pos = torch.zeros_like(ids)
    seq = torch.full_like(ids, -1)
    order = []
    for r, members in enumerate(rows):
        col = 0
        for k, i in enumerate(members):
            s = samples[i]
            n = len(s["ids"])
            ids[r, col : col + n], labels[r, col : col + n] = torch.from_numpy(s["ids"]), torch.from_numpy(s["labels"])
            p = torch.arange(n)
            if s["geom"] is not None:  # positions in expanded coordinates: text after the image shifts
                p = torch.where(p > 1, p + s["geom"].num_image_tokens - 1, p)
            pos[r, col : col + n], seq[r, col : col + n] = p, k
            col += n
            order.append(i)
    views = _views([samples[i] for i in order])
    batch = {"input_ids": ids, "labels": labels, "attention_mask": seq >= 0, "position_ids": pos, "seq_ids": seq}
    return batch | {k: v for k, v in views.items() if v.numel()}


# ------------------------------------------------------------------------------------------------- paths
def reference_loss(model: EveWithTeacher, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The original's step: per-sample patch embedding and aligner, all hidden states, full logits.

    Models without an aligner (EVEv2, or EVE v1 built with ``align_weight: 0``) skip the aligner, the teacher and
    the hidden states; EVEv2 has no projector, and its decoder gets the image-token mask.
    """
    vlm, embed = model.vlm, model.vlm.llm.get_input_embeddings()
    projector = getattr(vlm, "projector", None) or torch.nn.Identity()
    aligned = vlm.aligner is not None and model.teacher is not None
    seqs, labels, spans, images = [], [], [], []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        ids, lab = batch["input_ids"][i, :n], batch["labels"][i, :n]
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        if where.numel():
            s = int(where[0])
            image = vlm.patch_embed(batch["pixel_values"][i : i + 1], batch["pixel_mask"][i : i + 1])
            tok = projector(image.tokens)
            emb = torch.cat([embed(ids[:s]), tok.to(embed.weight.dtype), embed(ids[s + 1 :])])
            lab = torch.cat([lab[:s], torch.full((tok.shape[0],), IGNORE_INDEX, device=lab.device), lab[s + 1 :]])
            spans.append((i, s, image))
            images.append((s, tok.shape[0]))
        else:
            emb = embed(ids)
            images.append((0, 0))
        seqs.append(emb)
        labels.append(lab)
    length = max(e.shape[0] for e in seqs)
    emb = torch.stack([F.pad(e, (0, 0, 0, length - e.shape[0])) for e in seqs])
    lab = torch.stack([F.pad(x, (0, length - x.shape[0]), value=IGNORE_INDEX) for x in labels])
    slot = torch.arange(length, device=emb.device)
    mask = torch.stack([slot < e.shape[0] for e in seqs])
    extra: dict[str, Any] = {"output_hidden_states": True} if aligned else {}
    if isinstance(vlm, EveV2VLM):  # the image tokens of every row run the vision weights
        extra["vision_mask"] = torch.stack([(slot >= s) & (slot < s + n) for s, n in images])
    out = vlm.llm(inputs_embeds=emb, attention_mask=mask, **extra)
    logits = out.logits  # [B, L, V]: every position, image tokens included
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    if not aligned:
        return ce
    hidden = torch.stack(out.hidden_states, 2)  # [B, L, layers + 1, H]: every hidden state kept
    with torch.no_grad():
        feats = model.teacher(batch["teacher_pixel_values"])  # the original runs CLIP on the whole batch
    valid = teacher_cell_mask(batch["teacher_pixel_mask"], 14)
    losses = []
    for i, s, image in spans:  # the aligner, sample by sample
        r0, c0, h, w = image.grids[0].tolist()
        grid = hidden[i, s + 1 : s + 1 + h * (w + 1)].unflatten(0, (h, w + 1))[:, :w]  # [h, w, layers + 1, H]
        cells = torch.stack([grid[:, :, j].flatten(0, 1) for j in vlm.aligner.layer_indices])  # [J, P, H]
        cell_ids = (torch.arange(h, device=emb.device)[:, None] + r0) * 24 + c0 + torch.arange(w, device=emb.device)
        pred, ids_ = vlm.aligner(list(cells), cell_ids.flatten())
        target = feats[i][valid[i]]
        losses.append(cosine_alignment_loss(pred, target.to(pred.dtype), torch.zeros_like(ids_), 1))
    return ce + (torch.stack(losses).mean() if losses else 0.0)


def decoder_flops(
    model: EveWithTeacher, batch_lengths: list[int], trained: bool, supervised: list[int] | None = None
) -> float:
    """Decoder FLOPs of a step over samples of ``batch_lengths`` tokens (``utils.flops``), every weight ``trained``.

    The parameters are split by ``utils.flops.decoder_params``, as the planner and the training callback split
    them. EVE v1: the decoder's parameters without the input embedding. EVEv2: the routed (useful) count, one branch
    per token, so the parameters without the vision copies and without the input embedding. Of these, the LM head
    (also when tied to the input embedding: it still runs) counts only at each sample's ``supervised`` positions,
    the rest at every token; without ``supervised``, the head too counts at every token (``mfu_head_every_token``).
    """
    llm = model.vlm.llm
    copies = [(v, t) for _, v, t in vision_text_pairs(llm)] if isinstance(model.vlm, EveV2VLM) else []
    counts = decoder_params(llm, vision_copies=copies).whole(trained)
    return counts.flops(
        sum(batch_lengths), sum(n * n for n in batch_lengths), None if supervised is None else sum(supervised)
    )


def set_path(model: EveWithTeacher, path: str) -> None:
    """Put the model in a path's settings.

    ``ours_bf16_residual`` turns ``autocast_residual`` on (every other path off); an EVEv2 model's routing: ``dense``
    computes both branches for every token, every other path is routed.
    """
    model.vlm.config.autocast_residual = path == "ours_bf16_residual"
    if isinstance(model.vlm, EveV2VLM):
        model.vlm.set_routing("dense" if path == "dense" else "routed")
    elif path == "dense":
        raise ValueError("the dense path is EVEv2's (routing='dense'); EVE v1 models have no vision copies")


def train_step(path: str, model: EveWithTeacher, batch: dict, opt: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step of a path under bf16 autocast; returns the loss."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16):
        loss = reference_loss(model, batch) if path == "reference" else model(batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def profile_path(path: str, model: EveWithTeacher, batches: list[dict], steps: int, out_dir: Path) -> str:
    """Profile ``steps`` optimizer steps of a path; write a Chrome trace, return the top operators as a table."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=torch.cuda.is_available())  # as in time_path
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    train_step(path, model, batches[0], opt)  # warm-up outside the trace
    with torch.profiler.profile(activities=activities) as prof:
        for step in range(steps):
            train_step(path, model, batches[step % len(batches)], opt)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / f"trace_{path}.json"))
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    (out_dir / f"top_ops_{path}.txt").write_text(table)
    return table


def time_path(
    path: str, model: EveWithTeacher, batches: list[dict], steps: int, warmup: int, trained: bool, ckpt: bool = False
) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    if path == "reference" or (ckpt and not any(map(is_checkpointed, decoder_layers(model.vlm.llm)))):
        model.vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif not ckpt:
        model.vlm.llm.gradient_checkpointing_disable()
    model.train()
    torch.cuda.reset_peak_memory_stats()
    times, first_loss, shares = [], None, []
    projector = getattr(model.vlm, "projector", None)  # EVEv2 has none
    timer = ForwardTimer({"teacher": model.teacher, "patch_embed": model.vlm.patch_embed, "projector": projector})
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        torch.cuda.synchronize()
        timer.reset()
        t0 = time.perf_counter()
        loss = train_step(path, model, batch, opt)
        torch.cuda.synchronize()
        if step == 0:
            first_loss = float(loss)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            shares.append(timer.seconds())
    timer.remove()
    step_s = float(np.median(times))
    mean = {k: float(np.mean([s[k] for s in shares])) for k in ("teacher", "patch_embed", "projector")}
    out = {
        "step_s": step_s,
        "first_loss": first_loss,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "teacher_fwd_s": mean["teacher"],
        "patch_embed_fwd_s": mean["patch_embed"] + mean["projector"],
        "teacher_pel_share": (mean["teacher"] + mean["patch_embed"] + mean["projector"]) / step_s,
    }
    if model.teacher is None:  # nothing to time (EVEv2, or no alignment loss)
        del out["teacher_fwd_s"]
        out["pel_share"] = out.pop("teacher_pel_share")
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    model = build_random_model(args.model, args.workload, device, args.attention)
    trained = args.workload != "prealign"
    family = "evev2" if isinstance(model.vlm, EveV2VLM) else "eve"
    paths = (args.paths or ("ours,dense" if family == "evev2" else "ours,reference")).split(",")
    if "dense" in paths and family != "evev2":
        raise SystemExit("--paths dense: only EVEv2 models (--model evev2_1b | evev2_7b) have a dense routing")
    if family == "evev2" and args.ce_impl != "torch":
        raise SystemExit(f"--ce-impl {args.ce_impl}: EVEv2 models compute their loss with the torch CE only")
    # every path starts from the same weights; the copy waits in host memory (a 7B copy would not fit beside it)
    init = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    size = int(getattr(model.vlm.config, "image_size", 800))
    draws = [draw_samples(args.workload, args.micro_batch, rng, family, size) for _ in range(4)]
    lengths = [[sample_tokens(s) for s in d] for d in draws]
    supervised = [[supervised_count(s) for s in d] for d in draws]
    results: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0),
        "model": args.model,
        "family": family,
        "workload": args.workload,
        "micro_batch": args.micro_batch,
        "attention": attention.backend_of(model.vlm.llm),
        "checkpointing_ours": args.checkpoint_ours,
        "token_budget": args.token_budget,
        "compile_ours": args.compile,  # and the dense path's (EVEv2)
        "compile_teacher_ours": bool(args.compile and args.compile_teacher),
        "rows_ours": args.rows,
        "ce_impl_ours": args.ce_impl,
        "initial_weights_kept_on": "host",  # earlier runs kept them on the GPU (their peaks include one copy)
        "fp8_recipe": args.fp8_recipe if "ours_fp8" in paths else None,
        "fp8_amax": args.fp8_amax if "ours_fp8" in paths else None,
        "paths": {},
    }
    if family == "evev2":
        results["image_size"] = size
    backend = attention.backend_of(model.vlm.llm)
    # compiling and the FP8 swap are in place: the eager reference path goes first, the FP8 one last
    paths.sort(key=lambda name: {"reference": 0, "dense": 0, "ours_bf16_residual": 1.5, "ours_fp8": 2}.get(name, 1))
    for path in paths:
        model.load_state_dict(init)
        set_path(model, path)
        model.vlm.config.ce_impl = args.ce_impl if path != "reference" else "torch"
        if path == "ours_fp8":
            n_fp8 = convert_decoder_to_fp8(model.vlm.llm, args.fp8_recipe, amax=args.fp8_amax)
            model.vlm.config.pad_to_multiple_of = FP8_ROW_MULTIPLE  # rows of whole 16-token blocks
            print(f"ours_fp8: {n_fp8} decoder linear layers in float8 ({args.fp8_recipe})", flush=True)
        # the reference path calls the HF decoder as the original does, without our layout's segment offsets
        attention.set_backend(model.vlm.llm, attention.bare_decoder_name(backend) if path == "reference" else backend)
        # EVEv2's dense path is the same model with the original's routing, so it is compiled like ours: the
        # comparison is routing against routing; the reference path stays the original's eager computation
        if path in ("ours", "ours_bf16_residual", "ours_fp8", "dense") and args.compile:
            mode = None if args.compile == "default" else args.compile
            if args.checkpoint_ours:  # before compiling: the checkpoint goes inside the compiled forward
                enable_checkpointing(model.vlm.llm)
            else:  # the reference path left it on
                model.vlm.llm.gradient_checkpointing_disable()
            compile_decoder_layers(model.vlm.llm, mode=mode)
            if args.compile_teacher and model.teacher is not None:
                compile_layers(model.teacher.layers, mode=mode)
        if path == "reference":
            batches = [_to(padded_batch(d), device) for d in draws]
        else:
            balanced = args.rows == "balanced"
            batches = [_to(packed_batch(d, args.token_budget, balanced), device) for d in draws]
        r = time_path(path, model, batches, args.steps, args.warmup, trained, ckpt=args.checkpoint_ours)
        flops = np.mean([decoder_flops(model, ln, trained, sup) for ln, sup in zip(lengths, supervised)])
        every_token = np.mean([decoder_flops(model, ln, trained) for ln in lengths])  # the earlier convention
        r |= {
            "samples_per_s": args.micro_batch / r["step_s"],
            "tokens_per_s": float(np.mean([sum(ln) for ln in lengths])) / r["step_s"],
            "mfu": flops / r["step_s"] / (PEAK_TFLOPS * 1e12),
            "mfu_head_every_token": every_token / r["step_s"] / (PEAK_TFLOPS * 1e12),
        }
        results["paths"][path] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        print(f"{path:>9}: " + ", ".join(f"{k} {v}" for k, v in results["paths"][path].items()), flush=True)
        if args.profile:
            print(profile_path(path, model, batches, 3, Path(args.profile)), flush=True)
    if {"ours", "reference"} <= set(results["paths"]):
        p = results["paths"]
        results["speedup"] = round(p["ours"]["samples_per_s"] / p["reference"]["samples_per_s"], 2)
        results["first_loss_diff"] = round(abs(p["ours"]["first_loss"] - p["reference"]["first_loss"]), 4)
    if {"ours", "dense"} <= set(results["paths"]):
        p = results["paths"]
        results["speedup_vs_dense"] = round(p["ours"]["samples_per_s"] / p["dense"]["samples_per_s"], 3)
        results["dense_first_loss_rel_diff"] = round(
            abs(p["dense"]["first_loss"] - p["ours"]["first_loss"]) / abs(p["ours"]["first_loss"]), 5
        )
    if {"ours", "ours_bf16_residual"} <= set(results["paths"]):
        p = results["paths"]
        results["bf16_residual_speedup"] = round(
            p["ours_bf16_residual"]["samples_per_s"] / p["ours"]["samples_per_s"], 3
        )
        results["bf16_residual_first_loss_rel_diff"] = round(
            abs(p["ours_bf16_residual"]["first_loss"] - p["ours"]["first_loss"]) / abs(p["ours"]["first_loss"]), 5
        )
    if {"ours", "ours_fp8"} <= set(results["paths"]):
        p = results["paths"]
        results["speedup_vs_bf16"] = round(p["ours_fp8"]["samples_per_s"] / p["ours"]["samples_per_s"], 3)
        results["fp8_first_loss_rel_diff"] = round(
            abs(p["ours_fp8"]["first_loss"] - p["ours"]["first_loss"]) / abs(p["ours"]["first_loss"]), 5
        )
    return results


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eve_lightning.bench.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="eve_1b", help=f"{' | '.join(MODEL_NAMES)} | a model config file (conf/model/*.yaml)"
    )
    p.add_argument("--workload", choices=["sft", "pretrain", "prealign"], default="sft")
    p.add_argument(
        "--paths",
        default=None,
        help="comma-separated: ours, reference, ours_fp8 (our path with the decoder's linears in float8, run last), "
        "ours_bf16_residual (our path with model.eve.autocast_residual: the decoder's residual stream in bf16), "
        "dense (EVEv2: routing='dense', the original's compute-both); default ours,reference (EVE) | ours,dense "
        "(EVEv2)",
    )
    p.add_argument(
        "--ce-impl", choices=list(CE_IMPLS), default="torch", help="our paths' LM head + loss (models/fused_ce.py)"
    )
    p.add_argument(
        "--fp8-amax",
        choices=list(FP8_AMAX_MODES),
        default="separate",
        help="how the ours_fp8 path's tensorwise scales take each tensor's amax (models/fp8.py)",
    )
    p.add_argument("--fp8-recipe", choices=list(FP8_RECIPES), default="tensorwise", help="the ours_fp8 path's recipe")
    p.add_argument("--micro-batch", type=int, default=16, help="samples per optimizer step (both paths)")
    p.add_argument("--token-budget", type=int, default=16384, help="packed row budget of our path")
    p.add_argument(
        "--attention",
        choices=[name for name in attention.BACKENDS if name != attention.EAGER],
        help=f"default: flash or flex ({attention.VARLEN}: PyTorch's variable-length flash kernel on our path)",
    )
    p.add_argument("--checkpoint-ours", action="store_true", help="activation checkpointing on our path too")
    p.add_argument(
        "--rows",
        choices=["first_fit", "balanced"],
        default="first_fit",
        help="our rows: first-fit (the longest row sets every row's length), or balanced as the training collator",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "max-autotune-no-cudagraphs"],
        help="torch.compile the decoder blocks on our paths and EVEv2's dense path (after the eager reference path)",
    )
    p.add_argument(
        "--compile-teacher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --compile: also the teacher's encoder blocks, as training's compile.teacher (default: yes)",
    )
    p.add_argument("--steps", type=int, default=8, help="timed steps (>= 1)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--profile", help="also profile 3 steps per path: Chrome trace + top operators into this folder")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    unknown = set((args.paths or "ours").split(",")) - {"ours", "reference", "ours_fp8", "ours_bf16_residual", "dense"}
    if unknown:
        p.error(
            f"--paths: unknown {', '.join(sorted(unknown))}; use ours, reference, ours_fp8, ours_bf16_residual, dense"
        )
    if args.model not in MODEL_NAMES and not Path(args.model).is_file():
        p.error(f"--model {args.model!r}: use {' | '.join(MODEL_NAMES)} or an existing model config file")
    if not torch.cuda.is_available():
        raise SystemExit("eve_lightning.bench.train: error: needs a CUDA device")
    results = run(args)
    text = json.dumps(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
