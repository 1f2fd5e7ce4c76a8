"""The CLIP teacher runs only up to the distilled layer and still gives that layer's features; full CLIP
checkpoints load into it."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from eve_lightning.models.clip_teacher import ClipTeacher, encoder_layers

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56,
             patch_size=14)  # fmt: skip


def full_clip(seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**SHAPE)).eval()


@pytest.mark.parametrize("select_layer, kept", [(-2, 3), (-1, 4), (2, 2), (0, 0)])
def test_the_cut_teacher_gives_the_selected_hidden_state_of_the_full_model(select_layer, kept):
    full = full_clip()
    pixels = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    teacher = ClipTeacher(full_clip(), select_layer=select_layer)
    assert len(teacher.layers) == teacher.kept_layers == kept
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.no_grad():
        want = full(pixel_values=(pixels / 255 - mean) / std, output_hidden_states=True).hidden_states[select_layer]
    torch.testing.assert_close(teacher(pixels), want[:, 1:], rtol=1e-5, atol=1e-5)


def test_a_full_clip_state_dict_loads_strictly_and_drops_only_the_unused_layers():
    source = full_clip(seed=1)
    teacher = ClipTeacher(full_clip(seed=2), select_layer=-2)
    state = {f"clip.{k}": v for k, v in source.state_dict().items()}
    assert any(".layers.3." in k for k in state)
    teacher.load_state_dict(state)  # strict: nothing missing, the top layer's tensors are dropped, not unexpected
    kept = teacher.state_dict()
    assert not any(".layers.3." in k for k in kept)
    for key, value in kept.items():
        torch.testing.assert_close(value, state[key])


def test_a_layer_outside_the_encoder_is_refused_with_the_valid_range():
    with pytest.raises(ValueError, match=r"select_layer 5 is outside the 4-layer CLIP encoder \(use -5\.\.4"):
        ClipTeacher(full_clip(), select_layer=5)
    assert len(encoder_layers(full_clip())) == 4


def test_teacher_cells_count_only_when_wholly_inside_the_band():
    from eve_lightning.models.build import teacher_cell_mask

    mask = torch.zeros(1, 336, 336, dtype=torch.bool)
    mask[:, :25, :] = True  # rows 0-24: cell row 0 (px 0-13) inside, cell row 1 (px 14-27) 11/14 covered
    cells = teacher_cell_mask(mask, 14).view(24, 24)
    assert cells[0].all() and not cells[1:].any()
