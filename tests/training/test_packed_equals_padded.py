"""The packed layout (several samples per row, attention kept inside each sample) computes exactly the same losses
and gradients as the padded layout of the same samples."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.data.datamodule import EveDataModule
from eve_lightning.data.options import LoaderOptions, PackingOptions, StreamOptions
from eve_lightning.models import varlen_attention
from tests.helpers.repo_paths import CONF


def first_batch(data_dir, task, collate):
    dm = EveDataModule(
        train_shards=str(data_dir / "demo" / task / "train"),
        task=task,
        batch_size=6,
        loader=LoaderOptions(num_workers=0, pin_memory=False),
        stream=StreamOptions(shuffle=False, epoch_samples=12),
        packing=PackingOptions(collate=collate, pack_length=4096),
    )
    batch = next(iter(dm.train_dataloader()))
    keys = batch.pop("meta")["keys"]
    return batch, keys


@pytest.mark.parametrize(
    ("task", "attention"),
    [("pretrain", "sdpa"), ("sft", "sdpa"), ("pretrain", "torch_varlen"), ("sft", "torch_varlen")],
)
def test_packed_rows_give_the_padded_losses_and_gradients(demo_data_dir, task, attention):
    """Padded rows with the dense SDPA mask against packed rows with ``attention`` (torch_varlen: segment offsets)."""
    padded, keys_a = first_batch(demo_data_dir, task, "padded")
    packed, keys_b = first_batch(demo_data_dir, task, "packed")
    assert sorted(keys_a) == sorted(keys_b)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # samples really share rows
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    if attention == "torch_varlen":
        varlen_attention.register()
    torch.manual_seed(0)
    model = instantiate(copy.deepcopy(cfg), _convert_="all").float()
    results = []
    for batch, impl in ((padded, "sdpa"), (packed, attention)):
        model.vlm.llm.config._attn_implementation = impl
        model.zero_grad()
        out = model(batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.vlm.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (a, ga), (b, gb) = results
    assert a.n_ce_tokens == b.n_ce_tokens > 0 and a.n_align_images == b.n_align_images
    torch.testing.assert_close(b.loss_ce, a.loss_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss_align, a.loss_align, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-5, msg=name)
