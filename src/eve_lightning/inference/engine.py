"""ChatEngine: conversations in, streamed text out (shared by the chat CLI, the web demo and evaluation).

A conversation is a list of (role, text) turns ending with a user turn, plus at most one image; it is rendered
with the model family's chat template (EVE v1: ``vicuna_v1``; EVEv2: ``qwen2``) unless another is named, the image
placed at the start of the first user turn. The image view follows the family too: EVE v1's fixed canvas at the
model's size, or EVEv2's resize rule (area about ``max_size ** 2``, sides multiples of 32 px, the inference rule)
on a square canvas of the band's longer side. Generation stops at the template's end token (``<|im_end|>`` for
``qwen2`` when the tokenizer has it), else at the tokenizer's EOS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eve_lightning.constants import IMAGE_PLACEHOLDER
from eve_lightning.data.conversation import Turn
from eve_lightning.data.encoding import encode_parts
from eve_lightning.data.geometry import image_token_count
from eve_lightning.data.image import eve_view, evev2_view, to_rgb
from eve_lightning.data.templates import get_template
from eve_lightning.inference.generate import (
    GenerationConfig,
    GenerationConfigError,
    PromptTooLongError,
    generate_tokens,
)
from eve_lightning.inference.loading import LoadedModel, load_model

__all__ = ["ChatEngine", "GenerationConfig", "GenerationConfigError", "PromptTooLongError"]

ROLES = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt"}
FAMILY_TEMPLATES = {"eve": "vicuna_v1", "evev2": "qwen2"}  # the SFT template of each model family


def family_template(family: str) -> str:
    """The chat template a model family was fine-tuned with."""
    try:
        return FAMILY_TEMPLATES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILY_TEMPLATES)}") from None


class ChatEngine:
    """Generation front end of a loaded model.

    Attributes:
        loaded: the model, tokenizer and canvas size.
        template: the chat template (``None`` when made: the family's, see ``FAMILY_TEMPLATES``).
        stop_id: the token that ends an answer (the template's end token, else the tokenizer's EOS).
        last_stats: timing of the last generation: ttft_s, tokens_per_s, new_tokens, prompt_tokens.
    """

    def __init__(self, loaded: LoadedModel, template: str | None = None) -> None:
        self.loaded = loaded
        self.template = get_template(template or family_template(loaded.family))
        end = getattr(self.template, "eos_token", None)
        named = loaded.tokenizer.special_id(end) if end else None
        self.stop_id: int = loaded.tokenizer.eos_id if named is None else named
        self.last_stats: dict[str, float] = {}

    @classmethod
    def from_dir(cls, path: str | Path, device: str | None = None, template: str | None = None) -> ChatEngine:
        """Load any EVE weights (see `inference.loading.load_model`); ``template`` None = the family's."""
        return cls(load_model(path, device=device), template=template)

    @property
    def family(self) -> str:
        """The model family recorded by the loaded weights: "eve" (EVE v1) or "evev2"."""
        return self.loaded.family

    @property
    def model_name(self) -> str:
        """The model folder's name, with the stage that produced it when the export records one."""
        path = Path(self.loaded.source)
        stage = None
        if (path / "config.json").is_file():
            import json

            stage = json.loads((path / "config.json").read_text()).get("stage")
        return path.name + (f" ({stage})" if stage else "")

    @property
    def image_size(self) -> int:
        return self.loaded.image_size

    @property
    def device(self) -> torch.device:
        return next(self.loaded.vlm.parameters()).device

    def encode(self, image: Image.Image | None, turns: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Prompt tensors of one conversation (batch of 1)."""
        if not turns or ROLES.get(turns[-1][0]) != "human":
            raise ValueError("a conversation must end with a user turn")
        rendered = []
        for i, (role, text) in enumerate(turns):
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; use 'user' or 'assistant'")
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
            if i == 0 and image is not None:
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
            rendered.append(Turn(ROLES[role], text))
        enc = encode_parts(self.template.render_prompt(rendered), self.loaded.tokenizer)
        device = self.device
        batch = {
            "input_ids": torch.as_tensor(enc.input_ids, device=device)[None],
            "attention_mask": torch.ones(1, len(enc.input_ids), dtype=torch.bool, device=device),
        }
        if image is not None:
            pixels, mask = self.view(image)  # uint8 [3, S, S], [S, S]
            batch["pixel_values"] = torch.as_tensor(pixels, device=device)[None]
            batch["pixel_mask"] = torch.as_tensor(mask, device=device)[None]
        return batch

    def view(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """The model's view of one image: uint8 pixels [3, S, S] and band mask [S, S] (numpy).

        EVE v1: the fixed canvas of side ``image_size``. EVEv2: the inference resize rule at ``max_size``
        (= ``image_size``), on a square canvas of the band's longer side (S a multiple of 32, band at the top-left).
        """
        rgb = to_rgb(image)
        if self.family == "evev2":
            return evev2_view(rgb, self.image_size, training=False, square=True)
        return eve_view(rgb, self.image_size)

    def stream(
        self, image: Image.Image | None, turns: Sequence[tuple[str, str]], gen: GenerationConfig | None = None
    ) -> Iterator[str]:
        """Yield the answer as text deltas while it is generated.

        Raises:
            PromptTooLongError: the conversation (with its image tokens) does not fit the context.
        """
        gen = gen or GenerationConfig()
        batch = self.encode(image, turns)
        tok = self.loaded.tokenizer
        start = time.perf_counter()
        first = None
        ids: list[int] = []
        text = ""
        for token in generate_tokens(
            self.loaded.vlm,
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("pixel_values"),
            batch.get("pixel_mask"),
            self.stop_id,
            gen,
            self.loaded.context_length,
        ):
            if first is None:
                first = time.perf_counter() - start
            t = int(token[0])
            if t == self.stop_id:
                break
            ids.append(t)
            new_text = tok.decode(ids)
            if len(new_text) > len(text) and not new_text.endswith("\ufffd"):
                yield new_text[len(text) :]
                text = new_text
        elapsed = time.perf_counter() - start
        decode_time = max(elapsed - (first or 0.0), 1e-9)
        self.last_stats = {
            "ttft_s": first or elapsed,
            "tokens_per_s": (len(ids) - 1) / decode_time if len(ids) > 1 else 0.0,
            "new_tokens": len(ids),
            "prompt_tokens": self.prompt_tokens(batch),
        }

    def prompt_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Decoder positions the prompt takes: text tokens plus 1 + h(w+1) image tokens, minus the placeholder.

        The cell grid (h, w) comes from the model's own patch embedding: 28 px cells for EVE v1, 32 px for EVEv2.
        """
        n = int(batch["input_ids"].shape[1])
        if "pixel_mask" in batch:
            _, _, h, w = self.loaded.vlm.patch_embed.bands(batch["pixel_mask"])[0].tolist()
            n += image_token_count(h, w) - 1  # the placeholder's position is the first image token
        return n

    def chat(
        self, image: Image.Image | None, turns: Sequence[tuple[str, str]], gen: GenerationConfig | None = None
    ) -> str:
        """The whole answer at once."""
        return "".join(self.stream(image, turns, gen))
