"""Benchmark validation during training: val/<benchmark>/<metric> every N steps, training mode restored."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from eve_lightning.callbacks.benchmark_validation import BenchmarkValidation, spread
from eve_lightning.data.tokenizer import load_tokenizer
from eve_lightning.eval.base import Question
from eve_lightning.inference.loading import load_model


class TinyModule(pl.LightningModule):
    """Holds the VLM where EveLitModule does (``model.vlm``) and trains a stand-in parameter."""

    def __init__(self, vlm):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.vlm = vlm
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch.float().mean()).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


class TinyData(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.tokenizer = load_tokenizer(None)

    def train_dataloader(self):
        return DataLoader(torch.arange(16), batch_size=2)


def test_logs_val_metrics_every_n_steps_and_restores_training_mode(tiny_export, demo_root, tmp_path):
    vlm = load_model(tiny_export, device="cpu").vlm
    vlm.train()
    vlm.patch_embed.eval()  # a submodule deliberately in eval mode stays so
    callback = BenchmarkValidation("demo", root=str(demo_root), every_n_steps=2, limit=3, max_new_tokens=3)
    logger = CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(TinyModule(vlm), datamodule=TinyData())
    assert [step for step, _ in callback.history] == [2, 4]  # not again at the end: step 4 was just done
    assert len(callback.questions) == 3
    assert "val/demo/accuracy" in trainer.callback_metrics
    assert vlm.llm.training and not vlm.patch_embed.training
    logger.save()
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    logged = [r for r in rows if r.get("val/demo/accuracy")]
    assert [int(r["step"]) for r in logged] == [2, 4]


def test_plain_template_on_the_demo_uses_its_caption_part(demo_root):
    cb = BenchmarkValidation("demo", root=str(demo_root), template="plain", limit=None)
    assert cb._load()
    assert {q.meta["kind"] for q in cb.questions} == {"caption_check"}


def test_missing_data_turns_the_callback_off(tmp_path):
    cb = BenchmarkValidation("demo", root=str(tmp_path / "none"))
    assert not cb._load() and cb.disabled


def test_spread_takes_an_even_slice():
    questions = [Question(str(i), "p") for i in range(10)]
    assert [q.qid for q in spread(questions, 5)] == ["0", "2", "4", "6", "8"]
    assert len(spread(questions, None)) == 10
