"""The batched EveVLM equals a per-sample formulation written from the spec (losses and gradients).

The reference shares only parameters with the model under test, never its computations: pixel normalization,
the patch convolution (`F.conv2d`), the projector (`linear -> exact GELU -> linear`), the aligner's layer choice
(every `align_layer_interval`-th hidden state from the last down to 0), the teacher (a fresh, uncut HF CLIP vision
tower with the teacher's weights, penultimate hidden state) and the teacher's valid cells are written here.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from transformers import CLIPVisionConfig, CLIPVisionModel

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.helpers.views import make_batch

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # CLIP's, spec section 1.6
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def ref_normalize(pixels):
    return (pixels.float() / 255 - MEAN) / STD


# --------------------------------------------------------------------------- reference, one sample at a time


def ref_attention(attn, query_in, kv_in):
    """attn: PoolingAttention; query_in [..., Q, D]; kv_in [..., K, D] -> [..., Q, D] aggregated values (before proj).

    Head j attends with the j-th D/heads slice of the queries, keys and values; the logit scale is D^-0.5 (the full
    width, not the head width). Leading dims (e.g. every 2x2 cell of an image) are independent problems.
    """
    heads = attn.num_heads
    q = attn.q_proj(attn.q_norm(query_in))
    kv = attn.kv_proj(attn.kv_norm(kv_in))
    d = q.shape[-1]
    k, v = kv[..., :d], kv[..., d:]  # first half of the projection = keys

    def per_head(t):  # [..., N, D] -> [..., N, heads, D/heads]
        return t.reshape(*t.shape[:-1], heads, d // heads)

    logits = torch.einsum("...qhe,...khe->...hqk", per_head(q), per_head(k)) * d**-0.5
    out = torch.einsum("...hqk,...khe->...qhe", logits.softmax(-1), per_head(v))
    return out.reshape(*out.shape[:-2], d)


def ref_pel(pel, pixels, mask):
    """Spec 1.2 for one image: [3, S, S] uint8, [S, S] -> ([T, D] tokens, h, w, row0, col0)."""
    feat = F.conv2d(ref_normalize(pixels[None]), pel.conv.weight, stride=14)[0]  # [D, 2g, 2g], no bias
    pm = F.avg_pool2d(mask[None, None].float(), 14)[0, 0]
    rows, cols = pm.sum(1).nonzero().flatten(), pm.sum(0).nonzero().flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = feat[:, r0:r1, c0:c1]  # [D, Hp, Wp]
    d, hp, wp = crop.shape
    h, w = hp // 2, wp // 2
    # every 2x2 cell as [4, D] (row-major inside the cell), cells row-major over the grid: [h*w, 4, D]
    sub = crop[:, : 2 * h, : 2 * w].reshape(d, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 4, d)
    avg = sub.mean(1, keepdim=True)  # [h*w, 1, D]: each cell's query is its mean
    cells = (avg + pel.local_attn.out_proj(ref_attention(pel.local_attn, avg, sub)))[:, 0]  # [h*w, D]
    cls = pel.cls_token[None]
    cls = cls + pel.global_attn.out_proj(ref_attention(pel.global_attn, cls, cells))
    grid = cells.view(h, w, d)
    grid = torch.cat([grid, pel.split_token.view(1, 1, d).expand(h, 1, d)], 1)
    return torch.cat([cls, grid.reshape(-1, d)]), h, w, r0 // 2, c0 // 2


def ref_projector(proj, tokens):
    """Spec 1.2 step 7: mlp2x_gelu (exact GELU)."""
    return F.linear(F.gelu(F.linear(tokens, proj.fc1.weight, proj.fc1.bias)), proj.fc2.weight, proj.fc2.bias)


def ref_layers(num_layers, interval):
    """Spec 1.3: hidden-state indices num_layers, num_layers - interval, ..., 0 (query first)."""
    return list(range(num_layers, -1, -interval))


def ref_teacher(teacher, pixels, mask):
    """Spec 1.4: a fresh full CLIP vision tower with the teacher's weights; penultimate layer, CLS dropped; the cells
    whose 14x14 pooled mask is 1 (row-major)."""
    cfg = teacher.clip.config.to_dict()
    cfg["num_hidden_layers"] = 2  # conf/model/tiny.yaml's teacher, uncut
    clip = CLIPVisionModel(CLIPVisionConfig(**cfg)).eval()
    missing, unexpected = clip.load_state_dict(teacher.clip.state_dict(), strict=False)
    assert not unexpected and all(".layers.1." in k for k in missing)  # only the layer above the distilled one
    with torch.no_grad():
        feats = clip(pixel_values=ref_normalize(pixels), output_hidden_states=True).hidden_states[-2][0, 1:]
    valid = F.avg_pool2d(mask[None, None].float(), 14).flatten() == 1
    return feats[valid]


def ref_aligner(al, hidden_states, span_start, h, w, ratio, layers):
    """Spec 1.3 for one image: HF hidden_states tuple -> [P, C] prediction."""
    grids = []
    for idx in layers:
        hs = hidden_states[idx][0, span_start + 1 : span_start + 1 + h * (w + 1)]  # drop CLS
        g = hs.view(h, w + 1, -1)[:, :w]  # drop SPL column
        if ratio > 1:
            g = F.avg_pool2d(g.permute(2, 0, 1)[None], ratio)[0].permute(1, 2, 0)
        grids.append(g.reshape(-1, g.shape[-1]))
    feats = [proj(norm(x)) for x, norm, proj in zip(grids, al.layer_norms, al.layer_projs)]
    c = feats[0].shape[-1]
    heads, hd = al.num_heads, c // al.num_heads
    fused = []
    for hh in range(heads):
        sl = slice(hh * hd, (hh + 1) * hd)
        q = feats[0][:, sl]  # [P, hd]
        ks = torch.stack([f[:, sl] for f in feats[1:]], 1)  # [P, J-1, hd]
        a = ((ks @ q[:, :, None]).squeeze(-1) * c**-0.5).softmax(-1)  # [P, J-1]
        fused.append((a[:, :, None] * ks).sum(1))
    return al.top_proj(grids[0]) + al.fused_proj(torch.cat(fused, -1))


def reference_losses(model, batch):
    vlm, teacher = model.vlm, model.teacher
    embed = vlm.llm.get_input_embeddings()
    ce_sum, n_tok, align = 0.0, 0, []
    for b in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][b].bool()
        ids, labels = batch["input_ids"][b][keep], batch["labels"][b][keep]
        img_pos = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        if img_pos.numel():
            s = int(img_pos[0])
            tok, h, w, _, _ = ref_pel(vlm.patch_embed, batch["pixel_values"][b], batch["pixel_mask"][b])
            img = ref_projector(vlm.projector, tok)
            emb = torch.cat([embed(ids[:s]), img, embed(ids[s + 1 :])])
            lab = torch.cat([labels[:s], torch.full((img.shape[0],), IGNORE_INDEX), labels[s + 1 :]])
        else:
            emb, lab = embed(ids), labels
        emb, lab = emb[: vlm.config.max_length], lab[: vlm.config.max_length]
        out = vlm.llm(inputs_embeds=emb[None], output_hidden_states=True)
        logits, target = out.logits[0, :-1], lab[1:]
        sel = target != IGNORE_INDEX
        ce_sum = ce_sum + F.cross_entropy(logits[sel], target[sel], reduction="sum")
        n_tok += int(sel.sum())
        if img_pos.numel() and s + img.shape[0] <= vlm.config.max_length:
            ratio = vlm.config.canvas_grid // 24
            layers = ref_layers(vlm.llm.config.num_hidden_layers, vlm.config.align_layer_interval)
            pred = ref_aligner(vlm.aligner, out.hidden_states, s, h, w, ratio, layers)
            target_f = ref_teacher(teacher, batch["teacher_pixel_values"][b : b + 1], batch["teacher_pixel_mask"][b])
            assert target_f.shape == pred.shape
            align.append(1 - F.cosine_similarity(pred, target_f, dim=-1).mean())
    loss_align = torch.stack(align).mean() if align else torch.zeros(())
    return ce_sum / n_tok, loss_align, len(align)


def build(cfg, side, max_length=2048):
    cfg = copy.deepcopy(cfg)
    cfg["eve"]["image_size"] = side
    cfg["eve"]["max_length"] = max_length
    torch.manual_seed(0)
    return instantiate(cfg, _convert_="all").float()


@pytest.mark.parametrize(
    ("side", "max_length"), [(672, 2048), pytest.param(1344, 2048, marks=pytest.mark.slow), (672, 400)]
)
def test_batched_forward_and_grads_equal_per_sample_reference(tiny_model_cfg, side, max_length):
    model = build(tiny_model_cfg, side, max_length)
    batch = make_batch(side)

    out = model(batch)
    model.zero_grad()
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.vlm.named_parameters() if p.grad is not None}

    model.zero_grad()
    ce, al, n_aligned = reference_losses(model, batch)
    (ce + al).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.vlm.named_parameters() if p.grad is not None}

    torch.testing.assert_close(out.loss_ce, ce.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss_align, al.detach(), rtol=1e-5, atol=1e-5)
    assert out.n_align_images == n_aligned == (3 if (side, max_length) == (672, 2048) else 2)
    assert (out.n_truncated > 0) == ((side, max_length) != (672, 2048))
    assert set(grads) == set(ref_grads)
    assert any(n.startswith("patch_embed.") for n in grads) and any(n.startswith("aligner.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)
