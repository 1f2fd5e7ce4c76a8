"""The benchmark's two paths compute the same loss: the original's per-sample way on padded rows, and ours on
packed rows (CPU, float32, tiny model)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eve_lightning.bench.train import draw_samples, packed_batch, padded_batch, reference_loss
from repo_paths import CONF


@pytest.mark.parametrize("workload", ["pretrain", "sft"])
def test_reference_and_ours_give_the_same_loss(workload):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg = copy.deepcopy(cfg)
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    torch.manual_seed(0)
    model = instantiate(cfg, _convert_="all").float()
    rng = np.random.default_rng(3)
    samples = draw_samples(workload, 6, rng)
    if workload == "sft":
        samples[0]["geom"] = None  # a text-only sample
        samples[0]["ids"][1] = 5
    padded = padded_batch(samples)
    packed = packed_batch(samples, 4096)
    assert packed["input_ids"].shape[0] < len(samples)
    ours = model(packed).loss
    ref = reference_loss(model, padded)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_flex_attention_block_mask_gives_the_padded_loss():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml"), resolve=True)
    cfg["llm"]["config"]["max_position_embeddings"] = 8192
    torch.manual_seed(0)
    sdpa = instantiate(copy.deepcopy(cfg), _convert_="all").float()
    cfg["llm"]["attn_implementation"] = "flex_attention"
    torch.manual_seed(0)
    flex = instantiate(copy.deepcopy(cfg), _convert_="all").float()
    samples = draw_samples("sft", 6, np.random.default_rng(3))
    with torch.no_grad():  # FlexAttention has no CPU backward; the GPU benchmark runs it for real
        a = sdpa(padded_batch(samples)).loss
        b = flex(packed_batch(samples, 4096, fixed=True)).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
