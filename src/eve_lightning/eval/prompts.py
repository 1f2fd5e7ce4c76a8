"""Prompt pieces of the paper's evaluation protocol (LLaVA-1.5 prompts, spec section 7.3)."""

from __future__ import annotations

from collections.abc import Sequence

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def choice_prompt(question: str, options: Sequence[tuple[str, str]], hint: str | None, suffix: str) -> str:
    """Lay out a multiple-choice question.

    Layout: the hint (context) line when there is one, the question, one ``"A. option"`` line per option, then the
    instruction line.

    Args:
        question: the question text.
        options: (letter, text) pairs in display order.
        hint: context shown before the question, or None/empty.
        suffix: instruction line (``MULTIPLE_CHOICE``), or empty for none.
    """
    lines = [hint.strip()] if hint and hint.strip() else []
    lines.append(question.strip())
    lines += [f"{letter}. {text}" for letter, text in options]
    if suffix:
        lines.append(suffix)
    return "\n".join(lines)
