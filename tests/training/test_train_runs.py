"""Training runs on CPU through the real entry point: every stage, chaining through exports, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eve_lightning.lit.optim import warmup_cosine
from eve_lightning.train import build, train
from tests.helpers.runs import compose_train

pytestmark = pytest.mark.slow  # whole training runs


def metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))


def export_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


def run_stage(tmp_path, data_dir, name, overrides=(), tag=""):
    root = tmp_path / (name + tag)
    cfg = compose_train([f"+stage={name}", *overrides], root, data_dir)
    loss = train(cfg)
    return root / "run", loss


def test_stages_run_and_chain_through_exports(tmp_path, demo_data_dir):
    pre, loss = run_stage(tmp_path, demo_data_dir, "prealign")
    assert loss is not None and loss == loss  # finite, returned for sweeps
    assert (pre / "checkpoints" / "last.ckpt").is_file()
    assert (pre / "export" / "config.json").is_file() and (pre / "export" / "tokenizer.model.v1").is_file()
    rows = metrics(pre)
    assert max(int(r["step"]) for r in rows) >= 2
    assert any(r.get("val/loss") for r in rows) and any(r.get("lr/patch_embed") for r in rows)

    # prealign again from its own export: the frozen LLM is bit-identical, the vision parts moved
    pre2, _ = run_stage(tmp_path, demo_data_dir, "prealign", [f"init_from={pre}/export"], tag="2")
    a, b = export_state(pre), export_state(pre2)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("llm."))
    assert not torch.equal(a["patch_embed.conv.weight"], b["patch_embed.conv.weight"])

    # pretrain with LR 0 from the prealign export: every weight arrives unchanged (chaining loses nothing)
    zero = ["optim.lr=0.0", f"init_from={pre2}/export"]
    pt, _ = run_stage(tmp_path, demo_data_dir, "pretrain", zero)
    c = export_state(pt)
    assert set(c) == set(b) and all(torch.equal(b[k], c[k]) for k in b)

    sft, _ = run_stage(tmp_path, demo_data_dir, "sft", [f"init_from={pt}/export"])
    assert (sft / "export" / "model.safetensors").is_file()


def test_hd_stage_runs_at_1344(tmp_path, demo_data_dir):
    run, loss = run_stage(tmp_path, demo_data_dir, "sft_hd", ["resolution=r1344", "trainer.max_steps=1"])
    assert loss is not None
    import json

    assert json.loads((run / "export" / "config.json").read_text())["eve"]["image_size"] == 1344


def test_resume_from_last_continues_step_count_and_lr_schedule(tmp_path, demo_data_dir):
    common = ["+stage=pretrain", "trainer.max_steps=6", "optim.warmup_ratio=0.34", "trainer.val_check_interval=100"]
    common.append("security.extra_targets=[tests.helpers.stop_at.StopAt]")
    root = tmp_path / "resume"
    # killed after step 4 (a checkpoint was written at step 4)
    cfg = compose_train(
        [*common, "+callbacks.stop._target_=tests.helpers.stop_at.StopAt", "+callbacks.stop.step=4"],
        root,
        demo_data_dir,
    )
    cfg.paths.output_dir = str(root / "logs" / "train" / "demo" / "pretrain" / "first")
    train(cfg)
    # resumed with ckpt_path=last: finds the newest last.ckpt of this experiment and stage
    cfg = compose_train([*common, "ckpt_path=last", f"paths.log_dir={root}/logs"], root, demo_data_dir)
    cfg.paths.output_dir = str(root / "logs" / "train" / "demo" / "pretrain" / "second")
    run = build(cfg)
    assert run.ckpt_path.endswith("first/checkpoints/last.ckpt")
    run.trainer.fit(run.module, datamodule=run.data_module, ckpt_path=run.ckpt_path)
    assert run.trainer.global_step == 6
    lrs = [float(r["lr/base"]) for r in metrics(Path(cfg.paths.output_dir)) if r.get("lr/base")]
    peak = float(cfg.optim.lr)
    schedule = warmup_cosine(6, 3)
    # logged after optimizer steps 5 and 6 (0-based 4, 5): the scheduler continued, not restarted
    assert len(lrs) == 2
    assert lrs == pytest.approx([peak * schedule(5), peak * schedule(6)])
    assert lrs[0] > 0 and lrs[0] != pytest.approx(peak)  # a restarted schedule would sit at warmup or peak


def test_train_export_and_checkpoint_load_back_with_identical_logits(tmp_path, demo_data_dir):
    from eve_lightning.inference.loading import load_model

    cfg = compose_train(["+stage=sft", "trainer.max_steps=2"], tmp_path, demo_data_dir)
    run = build(cfg)
    run.trainer.fit(run.module, datamodule=run.data_module)
    trained = run.module.model.vlm.eval()
    batch = next(iter(run.data_module.train_dataloader()))
    batch.pop("meta", None)

    def logits(vlm):
        mm = vlm.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_mask"])
        with torch.no_grad():
            return vlm.llm(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask.long()).logits

    expected = logits(trained)
    out = Path(cfg.paths.output_dir)
    for source, kind in (
        (out / "export", "export"),
        (out / "checkpoints" / "last.ckpt", "lightning_checkpoint"),
        (out, "lightning_checkpoint"),
    ):
        loaded = load_model(source, device="cpu")
        assert loaded.kind == kind
        assert torch.equal(logits(loaded.vlm), expected), source
