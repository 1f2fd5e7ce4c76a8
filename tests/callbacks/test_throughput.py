"""`perf/mfu` counts the benchmark's useful decoder FLOPs: real tokens, the LM head at the supervised positions,
causal attention within each sample (never the packed row), 4 per parameter for frozen weights, and for EVEv2 one
branch per token. Tiny models through the training module's step on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eve_lightning.bench.train import draw_samples, packed_batch, padded_batch, sample_tokens, supervised_count
from eve_lightning.callbacks import throughput
from eve_lightning.callbacks.throughput import Throughput, batch_flops
from eve_lightning.lit.eve_module import EveLitModule
from eve_lightning.models.build import build_eve_model
from eve_lightning.models.evev2 import build_evev2_model, is_vision_parameter
from eve_lightning.utils.flops import samples_flops, step_flops
from tests.helpers.repo_paths import CONF

PREALIGN = ["vlm.patch_embed", "vlm.projector", "vlm.aligner"]  # the decoder frozen
EVEV2_S1 = ["vlm.patch_embed", "vlm.llm.*.moe_*"]  # text weights frozen, vision copies trained


def tiny_eve():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg.pop("_target_")
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    cfg["eve"]["max_length"] = 8192
    torch.manual_seed(0)
    return build_eve_model(**cfg)


def tiny_evev2():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "evev2_tiny.yaml"), resolve=True)
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    cfg["eve"]["max_length"] = 8192
    torch.manual_seed(0)
    return build_evev2_model({"config": cfg["llm"]["config"], "attn_implementation": "sdpa"}, cfg["eve"])


def step_stats(model, batch: dict, trainable: list[str]) -> tuple[EveLitModule, dict]:
    """The training module's ``last_stats`` after one training step on ``batch`` with the stage's trainable set."""
    stage = {"name": "test", "trainable": trainable}
    module = EveLitModule(lambda: model, stage, {"lr": 1e-4}, total_steps=1)
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.configure_model()
    module.log = lambda *args, **kwargs: None  # no fit loop here to log into
    module.training_step(dict(batch), 0)
    return module, module.last_stats


def callback_flops(module: EveLitModule) -> float:
    """The FLOPs the callback accumulates over one micro-batch (inside an accumulation window: nothing logged)."""
    cb = Throughput(peak_tflops=1.0)
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(_should_accumulate=lambda: True), world_size=1)
    cb.on_train_batch_start(trainer, module, None, 0)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    return cb._flops


def shape_of(llm) -> tuple[int, int, int, int]:
    """(body, head, layers, width) counted by hand: one branch without the input embedding and the LM head."""
    cfg = llm.config
    head = cfg.vocab_size * cfg.hidden_size
    text = sum(p.numel() for n, p in llm.named_parameters() if not is_vision_parameter(n))
    return text - 2 * head, head, cfg.num_hidden_layers, cfg.hidden_size  # untied: embedding + head


@pytest.fixture(scope="module")
def eve_samples():
    samples = draw_samples("sft", 5, np.random.default_rng(5))
    samples[0]["geom"] = None  # a text-only sample
    samples[0]["ids"][1] = 5
    return samples


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_eve_flops_count_real_samples_and_the_head_at_supervised_positions(layout, eve_samples):
    batch = packed_batch(eve_samples, 4096) if layout == "packed" else padded_batch(eve_samples)
    if layout == "packed":
        assert batch["input_ids"].shape[0] < len(eve_samples)  # samples share rows
    model = tiny_eve()
    module, stats = step_stats(model, batch, ["vlm"])
    lengths = [sample_tokens(s) for s in eve_samples]
    supervised = [supervised_count(s) for s in eve_samples]
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    assert stats["tokens"] == tokens and stats["sum_len_sq"] == squares and stats["supervised"] == sum(supervised)
    assert stats["image_tokens"] == 0
    body, head, layers, width = shape_of(model.vlm.llm)
    got = callback_flops(module)
    assert got == pytest.approx(6 * body * tokens + 6 * head * sum(supervised) + 6 * layers * width * squares)
    assert got == pytest.approx(samples_flops(body, layers, width, lengths, True, head, supervised))
    # the former per-token estimate: every parameter at every token, non-causal attention over the whole row
    row_estimate = (6 * (body + head) + 12 * layers * width * stats["seq_len"]) * tokens
    assert got < row_estimate


def test_a_frozen_decoder_counts_4_per_parameter_and_4_6_of_the_attention(eve_samples):
    model = tiny_eve()
    module, _ = step_stats(model, packed_batch(eve_samples, 4096), PREALIGN)
    assert not any(p.requires_grad for p in model.vlm.llm.parameters())
    lengths = [sample_tokens(s) for s in eve_samples]
    supervised = [supervised_count(s) for s in eve_samples]
    body, head, layers, width = shape_of(model.vlm.llm)
    got = callback_flops(module)
    squares = sum(n * n for n in lengths)
    assert got == pytest.approx(4 * body * sum(lengths) + 4 * head * sum(supervised) + 4 * layers * width * squares)
    assert got == pytest.approx(samples_flops(body, layers, width, lengths, False, head, supervised))


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("trainable", [["vlm"], EVEV2_S1])
def test_evev2_counts_one_branch_per_token(layout, trainable):
    samples = draw_samples("pretrain", 3, np.random.default_rng(0), "evev2", 256)
    batch = packed_batch(samples, 4096) if layout == "packed" else padded_batch(samples)
    model = tiny_evev2()
    module, stats = step_stats(model, batch, trainable)
    lengths = [sample_tokens(s) for s in samples]
    supervised = [supervised_count(s) for s in samples]
    images = sum(s["geom"].num_image_tokens for s in samples)
    tokens, squares, sup = sum(lengths), sum(n * n for n in lengths), sum(supervised)
    assert (stats["tokens"], stats["sum_len_sq"], stats["supervised"]) == (tokens, squares, sup)
    assert stats["image_tokens"] == images
    llm = model.vlm.llm
    vision = sum(p.numel() for n, p in llm.named_parameters() if is_vision_parameter(n))
    body, head, layers, width = shape_of(llm)
    assert vision > 0.5 * body  # the copies are large: counting them would nearly double the count
    got = callback_flops(module)
    attention = 6 * layers * width * squares  # any weights trained: the full backward of the attention
    if trainable == ["vlm"]:
        assert got == pytest.approx(samples_flops(body, layers, width, lengths, True, head, supervised))
    else:  # image tokens run trained vision copies (6), text tokens and the head frozen text weights (4)
        norm = llm.model.norm.weight.numel()  # the final norm has no copy: image tokens run it frozen too
        image = 6 * (body - norm) * images + 4 * norm * images
        want = image + 4 * body * (tokens - images) + 4 * head * sup + attention
        assert got == pytest.approx(want)


def test_mfu_is_the_window_flops_over_time_and_peak(eve_samples, monkeypatch):
    model = tiny_eve()
    module, _ = step_stats(model, packed_batch(eve_samples, 4096), ["vlm"])
    per_batch = batch_flops(module.decoder_params, module.last_stats)
    clock = iter([10.0, 12.5, 13.0])  # window start, its end, the next window's start
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    logged = {}
    module.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    cb = Throughput(peak_tflops=2e-6)  # 2 MFLOP/s
    for accumulate in (True, False):  # two micro-batches, one optimizer step
        trainer = SimpleNamespace(fit_loop=SimpleNamespace(_should_accumulate=lambda a=accumulate: a), world_size=1)
        cb.on_train_batch_start(trainer, module, None, 0)
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert logged["perf/mfu"] == pytest.approx(2 * per_batch / 2.5 / 2e6)
    assert cb._flops == 0.0  # the next window starts from zero


def test_the_counts_are_taken_before_the_strategy_shards_the_parameters(eve_samples):
    """FSDP (use_orig_params) swaps each parameter for this rank's shard after configure_model; the count stays the
    whole model's, on every rank."""
    model = tiny_eve()
    module, stats = step_stats(model, packed_batch(eve_samples, 4096), ["vlm"])
    whole = callback_flops(module)
    body, head, layers, width = shape_of(model.vlm.llm)
    for p in model.vlm.llm.parameters():  # this rank's shard: here nothing of the parameter
        p.data = torch.empty(0)
    assert sum(p.numel() for p in model.vlm.llm.parameters()) == 0
    got = callback_flops(module)
    assert got == whole
    want = 6 * body * stats["tokens"] + 6 * head * stats["supervised"] + 6 * layers * width * stats["sum_len_sq"]
    assert got == pytest.approx(want)


def test_a_partly_frozen_decoder_counts_its_trained_and_frozen_parameters_apart(eve_samples):
    model = tiny_eve()
    module, stats = step_stats(model, packed_batch(eve_samples, 4096), ["vlm.patch_embed", "vlm.llm.model.layers.0"])
    llm = model.vlm.llm
    layer = sum(p.numel() for p in llm.model.layers[0].parameters())
    body, head, layers, width = shape_of(llm)
    tokens, squares, sup = stats["tokens"], stats["sum_len_sq"], stats["supervised"]
    got = callback_flops(module)
    # one block trains (6), the rest and the head are frozen (4); a weight trains: the attention counts whole
    want = 6 * layer * tokens + 4 * (body - layer) * tokens + 4 * head * sup + 6 * layers * width * squares
    assert got == pytest.approx(want)
    assert got == pytest.approx(
        step_flops(layer, body - layer, layers, width, tokens, squares, head=head, supervised=sup)
    )


def test_evev2_image_tokens_count_the_trained_copies_6_and_the_frozen_ones_4():
    samples = draw_samples("pretrain", 2, np.random.default_rng(1), "evev2", 256)
    model = tiny_evev2()
    module, stats = step_stats(model, packed_batch(samples, 4096), ["vlm.patch_embed", "vlm.llm.*.moe_mlp.*"])
    llm = model.vlm.llm
    mlp = sum(p.numel() for n, p in llm.named_parameters() if ".moe_mlp." in n)
    assert mlp > 0 and all(p.requires_grad == (".moe_mlp." in n) for n, p in llm.named_parameters())
    body, head, layers, width = shape_of(llm)
    tokens, squares, sup, images = stats["tokens"], stats["sum_len_sq"], stats["supervised"], stats["image_tokens"]
    got = callback_flops(module)
    image = 6 * mlp * images + 4 * (body - mlp) * images  # the MLP copies train; attention and norms run frozen
    want = image + 4 * body * (tokens - images) + 4 * head * sup + 6 * layers * width * squares
    assert got == pytest.approx(want)


def nan_lm_head(model) -> None:
    with torch.no_grad():
        model.vlm.llm.lm_head.weight[0, 0] = float("nan")


def test_a_first_non_finite_micro_batch_counts_its_own_flops(eve_samples):
    model = tiny_eve()
    nan_lm_head(model)
    batch = packed_batch(eve_samples, 4096)
    module, stats = step_stats(model, batch, ["vlm"])
    assert module.skipped_steps == 1  # the step is skipped, its forward and backward still run
    lengths = [sample_tokens(s) for s in eve_samples]
    assert stats["tokens"] == sum(lengths) and stats["supervised"] == sum(supervised_count(s) for s in eve_samples)
    body, head, layers, width = shape_of(model.vlm.llm)
    supervised = [supervised_count(s) for s in eve_samples]
    assert callback_flops(module) == pytest.approx(samples_flops(body, layers, width, lengths, True, head, supervised))


def test_a_non_finite_micro_batch_after_a_finite_one_is_not_counted_as_the_previous_one(eve_samples):
    model = tiny_eve()
    module, first = step_stats(model, packed_batch(eve_samples, 4096), ["vlm"])
    nan_lm_head(model)
    module.training_step(dict(packed_batch(eve_samples[:2], 4096)), 1)
    assert module.skipped_steps == 1
    lengths = [sample_tokens(s) for s in eve_samples[:2]]
    assert module.last_stats["tokens"] == sum(lengths) < first["tokens"]
    body, head, layers, width = shape_of(model.vlm.llm)
    supervised = [supervised_count(s) for s in eve_samples[:2]]
    assert callback_flops(module) == pytest.approx(samples_flops(body, layers, width, lengths, True, head, supervised))


def test_stats_without_the_totals_count_nothing(eve_samples):
    model = tiny_eve()
    module, _ = step_stats(model, packed_batch(eve_samples, 4096), ["vlm"])
    module.last_stats = {}  # no step recorded
    assert callback_flops(module) == 0.0
    assert batch_flops(module.decoder_params, {"samples": 2, "tokens": 10}) == 0.0


def test_a_module_without_decoder_counts_logs_no_mfu(eve_samples):
    model = tiny_eve()
    module, _ = step_stats(model, packed_batch(eve_samples, 4096), ["vlm"])
    module.decoder_params = None
    logged = {}
    module.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    cb = Throughput(peak_tflops=1.0)
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(_should_accumulate=lambda: False), world_size=1)
    cb.on_train_batch_start(trainer, module, None, 0)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    assert "perf/mfu" not in logged and logged["perf/tokens_per_sec"] > 0
