"""`compile.enabled=true` (decoder and teacher blocks) and `torch_varlen` attention through the real entry point:
same losses as eager; samples counted per sample."""

from __future__ import annotations

import csv

import pytest

from eve_lightning.models.compile import is_checkpointed
from eve_lightning.train import build, train
from tests.helpers.runs import compose_train

PACKED = ["+stage=pretrain", "data.packing.collate=packed", "data.packing.pack_length=4096"]


def losses(run_dir):
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_compiled_blocks_and_varlen_attention_train_to_the_eager_losses(tmp_path, demo_data_dir):
    eager = compose_train(PACKED, tmp_path / "eager", demo_data_dir)
    compiled = [*PACKED, "compile.enabled=true", "compile.backend=aot_eager"]
    variants = {
        "compiled": compiled,
        "varlen": [*compiled, "model.llm.attn_implementation=torch_varlen"],  # segment offsets, traced by dynamo
    }
    train(eager)
    a = losses(tmp_path / "eager" / "run")
    for name, overrides in variants.items():
        cfg = compose_train(overrides, tmp_path / name, demo_data_dir)
        run = build(cfg)
        run.module.configure_model()
        llm = run.module.model.vlm.llm
        assert all("forward" in block.__dict__ for block in llm.model.layers)  # really compiled
        assert all("forward" in block.__dict__ for block in run.module.model.teacher.layers)  # compile.teacher
        assert llm.config._attn_implementation == ("torch_varlen" if name == "varlen" else "sdpa")
        train(cfg)
        b = losses(tmp_path / name / "run")
        assert len(a) == len(b) >= 3
        for x, y in zip(a, b):
            assert abs(x - y) <= 1e-4 * abs(x), (name, a, b)


def test_packed_rows_count_samples_not_rows(tmp_path, demo_data_dir):
    run = build(compose_train(PACKED, tmp_path, demo_data_dir))
    dm, module = run.data_module, run.module
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    n_samples, n_rows = len(batch["meta"]["keys"]), batch["input_ids"].shape[0]
    assert n_rows < n_samples  # samples really share rows
    module.configure_model()
    module.trainer = run.trainer
    module.log = lambda *args, **kwargs: None  # no fit loop here to log into
    module.training_step(batch, 0)
    assert module.last_stats["samples"] == n_samples


def test_selective_checkpointing_reaches_the_decoder_blocks_from_the_config(tmp_path, demo_data_dir):
    overrides = ["+stage=pretrain", "gradient_checkpointing=true", "gradient_checkpointing_layers=1"]
    module = build(compose_train(overrides, tmp_path, demo_data_dir)).module
    module.configure_model()
    flags = [block.gradient_checkpointing for block in module.model.vlm.llm.model.layers]
    assert flags[0] and not any(flags[1:]) and len(flags) > 1
    bad = build(compose_train([*overrides[:2], "gradient_checkpointing_layers=99"], tmp_path / "bad", demo_data_dir))
    with pytest.raises(ValueError, match="gradient_checkpointing_layers=99: the decoder has"):
        bad.module.configure_model()


def test_compile_is_refused_under_deepspeed_zero3(tmp_path, demo_data_dir, monkeypatch):
    from eve_lightning.lit import eve_module

    monkeypatch.setattr(eve_module, "hf_zero3_config", lambda strategy: object())  # as under ZeRO-3
    run = build(compose_train([*PACKED, "compile.enabled=true"], tmp_path, demo_data_dir))
    with pytest.raises(ValueError, match=r"not supported under DeepSpeed ZeRO-3.*compile\.enabled=false"):
        run.module.configure_model()


@pytest.mark.parametrize("zero3", [True, False])
def test_under_deepspeed_zero3_every_forward_calls_every_module(tmp_path, demo_data_dir, monkeypatch, zero3):
    from eve_lightning.lit import eve_module

    monkeypatch.setattr(eve_module, "hf_zero3_config", lambda strategy: object() if zero3 else None)
    run = build(compose_train(["+stage=sft"], tmp_path, demo_data_dir))
    run.module.configure_model()
    assert run.module.model.vlm.config.uniform_module_calls is zero3


def test_demo_data_made_with_other_settings_is_kept_and_reported(tmp_path, demo_data_dir, caplog):
    run = build(compose_train(["+stage=pretrain", "data.synthetic.max_turns=7"], tmp_path, demo_data_dir))
    stamp = (demo_data_dir / "demo" / "sft" / "train" / "index.json").stat().st_mtime_ns
    with caplog.at_level("WARNING"):
        run.data_module.prepare_data()
    assert "generated with other settings" in caplog.text and "max_turns 3 vs 7" in caplog.text
    assert (demo_data_dir / "demo" / "sft" / "train" / "index.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("checkpointing", [True, False])
def test_checkpointed_compiled_blocks_recompute_inside_their_graph(tmp_path, demo_data_dir, checkpointing):
    overrides = ["+stage=pretrain", "compile.enabled=true", "compile.backend=aot_eager"]
    run = build(compose_train([*overrides, f"gradient_checkpointing={checkpointing}"], tmp_path, demo_data_dir))
    run.module.configure_model()
    blocks = run.module.model.vlm.llm.model.layers
    assert all("forward" in b.__dict__ for b in blocks)  # compiled
    assert [is_checkpointed(b) for b in blocks] == [checkpointing] * len(blocks)
    assert not any(b.gradient_checkpointing for b in blocks)  # never a checkpoint around the compiled forward
