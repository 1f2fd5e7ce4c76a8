r"""Chat templates as data: conversations render to parts (text runs, BOS/EOS ids, the image slot).

Each text run is flagged as supervised or not; ``encoding`` computes the label masks from these parts.

Built in (spec section 3):
- ``plain`` (pre-training): ``BOS <image> caption "\n"``; the human text is discarded; the caption and its
  newline are supervised; an image is required.
- ``vicuna_v1`` (SFT): ``BOS system " USER: " ... " ASSISTANT:" " answer" EOS "USER: " ...``; every answer and
  its EOS are supervised, everything else masked. The image sits at the start of the first human turn.

EVEv2 (its ``conv_qwen_v2`` and ``conv_plain``, for Qwen2.5-7B-Instruct):
- ``qwen2`` (stage 2 and SFT): the ``vicuna_v1`` layout with ``<|im_end|>`` closing every answer (the original's
  ``sep2``): ``system " USER: <image>\n" q1 " ASSISTANT:" " a1" <|im_end|> "USER: " q2 " ASSISTANT:" " a2"
  <|im_end|>``. Not ChatML: no ``<|im_start|>``, no role headers. Qwen's tokenizer has no BOS, so none is
  inserted; answers and their ``<|im_end|>`` are supervised. ``<|im_end|>`` is inserted by id; a tokenizer
  without that token (the LLaMA vocabulary of the tiny test models) ends answers with its EOS instead.
- ``qwen2_plain`` (stages 0 to 1.1): ``<image> caption.strip() "\n"`` with the caption and newline supervised
  (a BOS first only for a tokenizer that has one; Qwen's has none).

More templates can be registered with ``register_template``; names are unique and templates are immutable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from eve_lightning.constants import IMAGE_PLACEHOLDER
from eve_lightning.data.conversation import Turn


@dataclass(frozen=True)
class Text:
    """A run of text; ``train`` marks it supervised."""

    text: str
    train: bool


@dataclass(frozen=True)
class Special:
    """A special token inserted by id (``bos`` or ``eos``), never by text.

    ``token`` names the end token of a template (e.g. ``<|im_end|>``): its id when the tokenizer has that token,
    else the tokenizer's EOS.
    """

    which: Literal["bos", "eos"]
    train: bool
    token: str | None = None


@dataclass(frozen=True)
class ImageSlot:
    """Where the image tokens go (one IMAGE_TOKEN_INDEX in ``input_ids``, never supervised)."""


Part = Text | Special | ImageSlot
IMAGE_SLOT = ImageSlot()


def split_image(text: str, train: bool) -> list[Part]:
    """Split ``text`` on the image placeholder into text runs and ``ImageSlot`` parts (empty runs dropped)."""
    parts: list[Part] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            parts.append(IMAGE_SLOT)
        if chunk:
            parts.append(Text(chunk, train))
    return parts


class ChatTemplate:
    """Base class of chat templates.

    Attributes:
        name: registry key.
        requires_image: samples without an image are dropped (pre-training templates).
    """

    name: str = ""
    requires_image: bool = False

    def render(self, turns: Sequence[Turn]) -> list[Part]:
        """Render a full training conversation (alternating turns, human first, gpt last)."""
        raise NotImplementedError

    def render_prompt(self, turns: Sequence[Turn]) -> list[Part]:
        """Render an inference prompt: ``turns`` ends with a human turn; the result ends where generation starts."""
        raise NotImplementedError


@dataclass(frozen=True)
class PlainTemplate(ChatTemplate):
    r"""Caption pre-training: ``BOS <image> caption "\n"`` with only the caption (and newline) supervised.

    ``strip`` removes white space around the caption first (EVEv2's ``qwen2_plain``).
    """

    name: str = "plain"
    strip: bool = False
    requires_image: bool = True

    def render(self, turns: Sequence[Turn]) -> list[Part]:
        answers = [t.text for t in turns if t.role == "gpt"]
        if not answers:
            raise ValueError(f"{self.name} template needs a caption (a gpt turn)")
        caption = answers[0].strip() if self.strip else answers[0]
        return [Special("bos", False), IMAGE_SLOT, Text(caption + "\n", True)]

    def render_prompt(self, turns: Sequence[Turn]) -> list[Part]:
        return [Special("bos", False), IMAGE_SLOT]


@dataclass(frozen=True)
class SeparatorTemplate(ChatTemplate):
    """Two-separator chat layout of the Vicuna v1 family.

    Renders ``system + sep + "USER: " h1 sep "ASSISTANT: " a1 EOS "USER: " h2 ...``; ``eos_token`` names the token
    that closes an answer when it is not the tokenizer's EOS (``<|im_end|>`` for ``qwen2``).
    """

    name: str = ""
    system: str = ""
    user: str = "USER"
    assistant: str = "ASSISTANT"
    sep: str = " "
    requires_image: bool = False
    eos_token: str | None = None

    def _prompt_parts(self, turns: Sequence[Turn], with_answers: bool) -> list[Part]:
        parts: list[Part] = [Special("bos", False)]
        pending = self.system + self.sep
        for turn in turns:
            if turn.role == "human":
                pending += f"{self.user}: {turn.text}{self.sep}{self.assistant}:"
                parts += split_image(pending, train=False)
                pending = ""
            elif with_answers:
                # The space before the answer belongs to the answer: SentencePiece glues it to the first word.
                parts += [Text(" " + turn.text, True), Special("eos", True, self.eos_token)]
        return parts

    def render(self, turns: Sequence[Turn]) -> list[Part]:
        return self._prompt_parts(turns, with_answers=True)

    def render_prompt(self, turns: Sequence[Turn]) -> list[Part]:
        if not turns or turns[-1].role != "human":
            raise ValueError("an inference prompt must end with a human turn")
        return self._prompt_parts(turns, with_answers=True)


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_REGISTRY: dict[str, ChatTemplate] = {}
TEMPLATES: Mapping[str, ChatTemplate] = MappingProxyType(_REGISTRY)


def register_template(template: ChatTemplate) -> ChatTemplate:
    """Add a template to the registry under ``template.name`` (names cannot be re-bound)."""
    if not template.name:
        raise ValueError("template needs a name")
    if template.name in _REGISTRY:
        raise ValueError(f"template {template.name!r} is already registered")
    _REGISTRY[template.name] = template
    return template


def get_template(name: str) -> ChatTemplate:
    """Return the registered template ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; registered: {sorted(_REGISTRY)}") from None


QWEN2_END = "<|im_end|>"  # closes every answer of EVEv2's qwen2 template (Qwen2.5-Instruct's EOS)

register_template(PlainTemplate())
register_template(SeparatorTemplate(name="vicuna_v1", system=VICUNA_SYSTEM))
register_template(SeparatorTemplate(name="qwen2", system=VICUNA_SYSTEM, eos_token=QWEN2_END))
register_template(PlainTemplate(name="qwen2_plain", strip=True))
