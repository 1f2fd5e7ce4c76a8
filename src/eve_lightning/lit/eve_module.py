"""EveLitModule: the Lightning side of training (build, freeze, step, log, optimize). The model is plain torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from eve_lightning.lit.freezing import apply_freezing, format_freezing_table, freezing_table
from eve_lightning.lit.loss_reduction import global_mean_terms, undo_deepspeed_gas_scaling
from eve_lightning.lit.optim import build_optimizer
from eve_lightning.lit.zero3 import writable_weights
from eve_lightning.models.build import EveWithTeacher
from eve_lightning.models.checkpointing import enable_checkpointing
from eve_lightning.models.compile import compile_decoder_layers, compile_layers
from eve_lightning.models.evev2 import copy_text_to_vision, is_vision_parameter
from eve_lightning.models.evev2.decoder import vision_text_pairs
from eve_lightning.models.export_format import load_export_weights, model_family
from eve_lightning.utils.config_checks import ZERO3_COMPILE
from eve_lightning.utils.flops import DecoderParams, decoder_params
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)


def hf_zero3_config(strategy: Any) -> Any:
    """Under DeepSpeed ZeRO-3, tell transformers so it initializes and loads partitioned weights correctly.

    The returned object must stay alive while the model is built (transformers keeps only a weak reference).
    """
    config = getattr(strategy, "config", None)
    if not isinstance(config, dict) or config.get("zero_optimization", {}).get("stage") != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


def count_decoder(model: EveWithTeacher) -> DecoderParams:
    """The decoder's parameter counts for the useful FLOP count (``utils.flops.decoder_params``).

    EVEv2: the vision copies make the image tokens' branch. Call it on whole parameters (ZeRO-3's ``ds_numel``
    counts), before FSDP replaces them by this rank's shards.
    """
    llm = model.vlm.llm
    copies = [(v, t) for _, v, t in vision_text_pairs(llm)] if model_family(model.vlm) == "evev2" else []
    return decoder_params(llm, vision_copies=copies)


class EveLitModule(pl.LightningModule):
    """Trains an EveWithTeacher for one stage.

    Args:
        model_factory: builds the EveWithTeacher (a Hydra `_partial_`); called in `configure_model`, so sharded
            strategies can build the model under their own context.
        stage: the resolved `stage` config (name, trainable prefixes or globs, ...). With `init_copy_experts`
            (EVEv2 stage 1.0) the vision experts are set to copies of their text weights after `init_from` is
            loaded (which may lack them: a stage-0 export) and before training: the original's copy step.
        optim: `build_optimizer` keyword arguments (lr, group_lr, weight_decay, betas, warmup_ratio, ...).
        total_steps: optimizer steps of the run (the LR schedule's length).
        init_from: stage export to start from (weights only), or None.
        gradient_checkpointing: recompute decoder activations in backward.
        gradient_checkpointing_layers: with checkpointing on, only the first N decoder blocks (None: all).
        tokenizer: the configured tokenizer path (None = the data module's default). Checkpoints record the one
            the attached data module actually loads (its ``tokenizer_source``), so they load on their own.
        max_consecutive_nonfinite: steps in a row with a non-finite loss or gradient norm before the run stops
            (each such step is skipped on every rank and its sample keys are logged).
        compile: `compile_decoder_layers` keyword arguments plus `enabled` and `teacher` (also compile the teacher's
            encoder blocks, default true); None or enabled false = eager.
        loss_normalization: ``global`` (several ranks: every supervised token and aligned image of a step weighs
            the same, as on one GPU; ``lit.loss_reduction``) or ``per_rank`` (each rank's micro-batch means,
            averaged over ranks, as the original code does).
    """

    def __init__(
        self,
        model_factory: Callable[[], EveWithTeacher],
        stage: dict[str, Any],
        optim: dict[str, Any],
        total_steps: int,
        init_from: str | None = None,
        gradient_checkpointing: bool = False,
        gradient_checkpointing_layers: int | None = None,
        tokenizer: str | None = None,
        max_consecutive_nonfinite: int = 3,
        compile: dict[str, Any] | None = None,
        loss_normalization: str = "global",
    ) -> None:
        super().__init__()
        if loss_normalization not in ("global", "per_rank"):
            raise ValueError(f"loss_normalization must be 'global' or 'per_rank', got {loss_normalization!r}")
        self.save_hyperparameters(ignore=["model_factory"], logger=False)
        self.model_factory = model_factory
        self.model: EveWithTeacher | None = None
        self.last_stats: dict[str, float] = {}
        self.decoder_params: DecoderParams | None = None  # for perf/mfu (callbacks.throughput), in configure_model
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self._skip_update = False  # set by a non-finite loss, read when the optimizer step comes

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self._hf_zero3 = hf_zero3_config(self.trainer.strategy if self._trainer is not None else None)
        if self._hf_zero3 is not None and (self.hparams.compile or {}).get("enabled"):
            raise ValueError(ZERO3_COMPILE)  # also checked at start-up; this guards other callers
        self.model = self.model_factory()
        if self._hf_zero3 is not None:
            # ZeRO-3 gathers a module's weights with a collective of all ranks at every call: each rank has to call
            # the same modules as often (a rank without images, or with fewer supervised tokens, would hang the rest)
            self.model.vlm.config.uniform_module_calls = True
            log.info("DeepSpeed ZeRO-3: every forward calls every module, on empty inputs where a batch has none")
        self._init_weights()
        apply_freezing(self.model, list(self.hparams.stage["trainable"]))
        # the counts before the strategy wraps the model: FSDP then swaps every parameter for this rank's shard
        self.decoder_params = count_decoder(self.model)
        if self.hparams.gradient_checkpointing:
            n = enable_checkpointing(self.model.vlm.llm, self.hparams.gradient_checkpointing_layers)
            log.info("activation checkpointing on %d decoder blocks", n)
        options = dict(self.hparams.compile or {})
        teacher = options.pop("teacher", True)
        if options.pop("enabled", False):
            compile_decoder_layers(self.model.vlm.llm, **options)  # checkpointed blocks: inside their graph
            if teacher and self.model.teacher is not None:
                n = compile_layers(self.model.teacher.layers, **options)
                log.info("compiled the forward of %d teacher encoder blocks", n)

    def _init_weights(self) -> None:
        """Load `init_from` (weights only), then run the copy step when the stage asks for it.

        Under ZeRO-3 the parameters are partitioned by now: both write through ``zero3.writable_weights``.
        """
        if self.hparams.init_from or self.hparams.stage.get("init_copy_experts", False):
            with writable_weights(self.model):
                self._load_init_weights()

    def _load_init_weights(self) -> None:
        copy_experts = bool(self.hparams.stage.get("init_copy_experts", False))
        if self.hparams.init_from:
            info = load_export_weights(
                self.hparams.init_from,
                self.model.vlm,
                self.model.teacher,
                allow_missing=is_vision_parameter if copy_experts else None,
            )
            log.info(
                "initialized from %s (%d aligner tensors skipped, %d vision-expert tensors not in the export)",
                self.hparams.init_from,
                len(info["skipped"]),
                len(info["missing"]),
            )
        if copy_experts:
            n = copy_text_to_vision(self.model) if model_family(self.model.vlm) == "evev2" else 0
            if n == 0:
                raise ValueError(
                    "stage.init_copy_experts=true but the model has no vision experts: the copy step is for EVEv2 "
                    "models with model.eve.moe_parts set (stage evev2_s1_0 with model=evev2_*)"
                )
            log.info("copy step: %d vision-expert tensors set to their text weights", n)

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            table = format_freezing_table(freezing_table(self.model))
            log.info("stage %s: parameters\n%s", self.hparams.stage["name"], table)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        meta = batch.pop("meta", None) or {}
        stats = meta.get("stats", {})
        out = self.model(batch)
        bsz = batch["input_ids"].shape[0]
        self.last_stats = {  # also for a skipped step: its forward and backward run (callbacks.throughput)
            "samples": len(meta.get("keys") or []) or bsz,  # packed rows hold several samples each
            "tokens": out.stats["n_tokens"],
            "seq_len": out.stats["seq_len"],
            "sum_len_sq": out.stats["sum_len_sq"],  # with the next two: the useful FLOPs (callbacks.throughput)
            "supervised": out.stats["n_supervised"],
            "image_tokens": out.stats.get("n_image_tokens", 0),  # EVEv2: tokens that run the vision branch
            "truncated": out.n_truncated,
        }
        here = not bool(torch.isfinite(out.loss))
        bad = self.trainer.strategy.reduce_boolean_decision(here, all=False)
        if bad:  # every rank decides alike: the backward still runs (the ranks' all-reduce must meet), the update not
            self._nonfinite(f"loss {float(out.loss)}" if here else "loss on another rank", meta.get("keys", []))
            self._skip_update = True
            return out.loss
        for key in ("real_token_share", "dropped", "filler"):
            if key in stats:
                self.log(
                    f"data/{key}", float(stats[key]), batch_size=bsz, reduce_fx="mean" if "share" in key else "sum"
                )
        loss, logged = out.loss, (out.loss.detach(), out.loss_ce, out.loss_align)
        world = self.trainer.world_size
        if world > 1 and self.hparams.loss_normalization == "global" and out.terms is not None:
            strategy = self.trainer.strategy
            norm = global_mean_terms(
                *out.terms,
                out.n_ce_tokens,
                out.n_align_images,
                world_size=world,
                all_reduce_sum=lambda t: strategy.reduce(t, reduce_op="sum"),
            )
            weight = self.model.vlm.config.align_weight or 1.0  # the alignment term comes weighted
            loss = norm.loss
            logged = (norm.loss_ce + norm.loss_align, norm.loss_ce, norm.loss_align / weight)
        # several ranks, global normalization: the step's means over all ranks; otherwise this rank's micro-batch
        self.log("train/loss", logged[0], prog_bar=True, batch_size=bsz)
        self.log("train/loss_ce", logged[1], batch_size=bsz)
        self.log("train/loss_align", logged[2], prog_bar=True, batch_size=bsz)
        return undo_deepspeed_gas_scaling(loss, self.trainer.strategy, self.trainer.accumulate_grad_batches)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch.pop("meta", None)
        out = self.model(batch)
        bsz = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, batch_size=bsz, sync_dist=True)
        self.log("val/loss_ce", out.loss_ce, batch_size=bsz, sync_dist=True)
        self.log("val/loss_align", out.loss_align, batch_size=bsz, sync_dist=True)
        return out.loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Skip the update after a non-finite loss or gradient norm; every rank decides alike.

        The gradients are dropped, so AdamW leaves every parameter alone.
        Under DDP a non-finite gradient on one rank reaches all of them through the all-reduce. DeepSpeed keeps its
        gradients in its own buffers, out of reach here: its fp16 loss scaler skips overflowing steps, bf16 has no
        such guard.
        """
        if self._skip_update:  # a non-finite loss in this step (already counted): drop its gradients
            self._skip_update = False
            for p in self.model.parameters():
                p.grad = None
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        here = not bool(torch.isfinite(norm))
        bad = self.trainer.strategy.reduce_boolean_decision(here, all=False)
        if bad:
            for p in self.model.parameters():
                p.grad = None
            self._nonfinite(f"gradient norm {float(norm)}" if here else "gradient norm on another rank", [])
        else:
            self.nonfinite_streak = 0
        self.log("train/grad_norm", norm, batch_size=1)

    def _nonfinite(self, what: str, keys: list[str]) -> None:
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        log.warning(
            "step %d skipped: non-finite %s (samples: %s) [%d in a row]",
            self.global_step,
            what,
            ", ".join(keys[:8]) or "n/a",
            self.nonfinite_streak,
        )
        limit = self.hparams.max_consecutive_nonfinite
        if self.nonfinite_streak >= limit:
            raise RuntimeError(
                f"stopping: {self.nonfinite_streak} consecutive steps had a non-finite {what.split()[0]} "
                f"(last samples: {', '.join(keys[:8]) or 'n/a'}). Lower optim.lr, check those samples, or raise "
                f"guards.max_consecutive_nonfinite (now {limit})."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("guard/skipped_steps", float(self.skipped_steps), batch_size=1)
        for opt in self.trainer.optimizers:  # DeepSpeed's wrapped optimizer is no torch Optimizer, read groups
            for group in opt.param_groups:
                if not group.get("name", "").endswith("/no_decay"):
                    self.log(f"lr/{group.get('name', 'base')}", group["lr"], batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse non-finite weights; make checkpoints self-describing (configs to rebuild the model)."""
        bad = [
            k for k, v in checkpoint.get("state_dict", {}).items() if v.is_floating_point() and not v.isfinite().all()
        ]
        if bad:
            raise RuntimeError(f"refusing to write a checkpoint with non-finite weights: {bad[:5]}")
        vlm = self.model.vlm
        checkpoint["eve_lightning_config"] = {
            "family": model_family(vlm),
            "eve": vlm.config.to_dict(),
            "llm": vlm.llm.config.to_dict(),
            "tokenizer": self.tokenizer_source(),
            "stage": self.hparams.stage["name"],
        }

    def tokenizer_source(self) -> str | None:
        """The tokenizer files in use: the attached data module's, else the configured path."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, "tokenizer_source", None) or self.hparams.tokenizer

    def configure_optimizers(self) -> dict[str, Any]:
        opt, sched = build_optimizer(self.model, self.hparams.total_steps, **self.hparams.optim)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
