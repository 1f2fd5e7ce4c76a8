r"""Conversation records: validation and normalization of LLaVA-style turns, shared by the shard writer and loader.

A LLaVA / EVE record holds ``conversations: [{"from": "human"|"gpt", "value": str}, ...]``. Normalization maps
role aliases, drops leading assistant turns and a trailing unanswered human turn, requires alternation and
non-empty answers, and moves the image placeholder to the start of the first human turn as ``"<image>\n" + text``
(wherever it was: start, end, middle, or missing while an image is attached). Problems raise
``ConversationError`` with a short machine-readable ``reason`` used in skip reports and drop counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from eve_lightning.constants import IMAGE_PLACEHOLDER

Role = Literal["human", "gpt"]
_ROLE_ALIASES: dict[str, Role] = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class ConversationError(ValueError):
    """A record that cannot become a training conversation; ``reason`` is a short code for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Turn:
    """One normalized message: ``role`` is ``human`` or ``gpt``."""

    role: Role
    text: str


def normalize_conversation(raw: Any, has_image: bool) -> list[Turn]:
    """Validate and normalize raw LLaVA turns.

    Args:
        raw: the ``conversations`` value of a record (list of ``{"from", "value"}`` dicts).
        has_image: whether the record has an image; then exactly one placeholder ends up at the start of the
            first human turn, else any placeholder is an error.

    Returns:
        Alternating turns, human first, gpt last.

    Raises:
        ConversationError: reasons ``bad_conversation``, ``bad_role``, ``roles_not_alternating``, ``no_answer``,
            ``empty_answer``, ``image_token_without_image``.
    """
    if not isinstance(raw, list) or not raw:
        raise ConversationError("bad_conversation", "conversations must be a non-empty list")
    turns: list[Turn] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str):
            raise ConversationError("bad_conversation", f"turn {i} is not a {{from, value}} object")
        role_name = str(msg.get("from", "")).lower()
        if role_name == "system":
            continue  # templates bring their own system prompt
        role = _ROLE_ALIASES.get(role_name)
        if role is None:
            raise ConversationError("bad_role", f"turn {i} has role {msg.get('from')!r}")
        turns.append(Turn(role, msg["value"]))
    while turns and turns[0].role != "human":
        turns.pop(0)
    if turns and turns[-1].role == "human":
        turns.pop()
    if not turns:
        raise ConversationError("no_answer", "no human turn followed by an answer")
    for i, turn in enumerate(turns):
        if turn.role != ("human" if i % 2 == 0 else "gpt"):
            raise ConversationError("roles_not_alternating", f"turn {i} is {turn.role}")
        if turn.role == "gpt" and not turn.text.strip():
            raise ConversationError("empty_answer", f"turn {i} is empty")
    placeholders = sum(t.text.count(IMAGE_PLACEHOLDER) for t in turns)
    if not has_image:
        if placeholders:
            raise ConversationError("image_token_without_image", "text has <image> but the record has no image")
        return turns
    turns = [Turn(t.role, t.text.replace(IMAGE_PLACEHOLDER, "")) for t in turns]
    turns[0] = Turn("human", f"{IMAGE_PLACEHOLDER}\n{turns[0].text.strip()}")
    return turns


def caption_turns(caption: str) -> list[Turn]:
    """Return the two-turn conversation of a caption pair (the human text is ignored by ``plain``)."""
    if not caption.strip():
        raise ConversationError("empty_answer", "empty caption")
    return [Turn("human", f"{IMAGE_PLACEHOLDER}\n"), Turn("gpt", caption)]


def turns_to_json(turns: list[Turn]) -> list[dict[str, str]]:
    """Return turns in the LLaVA JSON layout."""
    return [{"from": t.role, "value": t.text} for t in turns]


def word_count(turns: list[Turn]) -> int:
    """Return the whitespace word count over all turns (the grouping length of spec section 4.2)."""
    return sum(len(t.text.split()) for t in turns)
