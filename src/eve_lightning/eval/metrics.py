r"""Metric functions of the benchmarks: pure Python, no torch, no files.

Every function scores answers that are already strings. Accuracies here are fractions in [0, 1]; the benchmark
scorers turn them into the percentages that papers report.

VQA accuracy (VQAv2, VizWiz, TextVQA) follows the published definition of the VQA challenge:

* Normalization, applied to the prediction and to every human answer: newlines and tabs become spaces; the
  punctuation characters ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` are deleted when they touch a space (or
  when the text holds a comma between two digits, as in ``1,000``) and become a space otherwise; a period is
  deleted unless a digit follows it (``3.5`` keeps it, ``yes.`` loses it); then, word by word and in lower case,
  number words ``none``/``zero`` .. ``ten`` become digits, the articles ``a``, ``an``, ``the`` are dropped and
  contractions written without their apostrophe get it back (``dont`` -> ``don't``).
* Score of one question with n human answers: the mean, over the n ways to leave one human out, of
  ``min(#remaining humans who gave the predicted answer / 3, 1)``. With 10 humans an answer given by 1, 2 or 3
  of them scores 0.3, 0.6 and 0.9; by 4 or more, 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

# --- VQA answer normalization ----------------------------------------------------------------------------------

VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",")
VQA_PUNCTUATION += ("?", "!")
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
_DIGIT_COMMA = re.compile(r"\d,\d")
_LONE_PERIOD = re.compile(r"\.(?!\d)")


def _contraction_table() -> dict[str, str]:
    """Contractions spelled without apostrophes, mapped to their written form (built from word stems)."""
    table: dict[str, str] = {}
    negatives = (
        "ain", "aren", "can", "couldn", "didn", "doesn", "don", "hadn", "hasn", "haven", "isn", "mightn", "mustn",
        "needn", "shan", "shouldn", "wasn", "weren", "won", "wouldn",
    )  # fmt: skip
    for stem in negatives:
        table[f"{stem}t"] = f"{stem}'t"
    for stem in ("couldn", "shouldn", "wouldn", "mightn", "mustn"):  # "couldn't've" written in any partial way
        table[f"{stem}tve"] = f"{stem}'t've"
        table[f"{stem}'tve"] = f"{stem}'t've"
        table[f"{stem}t've"] = f"{stem}'t've"
    pronoun_forms = {
        "i": ("m", "d", "ll", "ve"),
        "you": ("re", "d", "ll", "ve"),
        "he": ("s", "d", "ll"),
        "she": ("s", "d", "ll"),
        "it": ("s", "d", "ll"),
        "we": ("re", "d", "ll", "ve"),
        "they": ("re", "d", "ll", "ve"),
        "that": ("s", "d", "ll"),
        "there": ("s", "d", "re", "ll", "ve"),
        "here": ("s",),
        "what": ("s", "re", "ll", "ve"),
        "who": ("s", "d", "ll", "re", "ve"),
        "where": ("s", "d", "ve"),
        "when": ("s",),
        "why": ("s",),
        "how": ("s", "d", "ll"),
        "let": ("s",),
        "someone": ("s", "d", "ll"),
        "somebody": ("s", "d", "ll"),
        "something": ("s", "d", "ll"),
        "nobody": ("s",),
        "everyone": ("s",),
        "could": ("ve",),
        "should": ("ve",),
        "would": ("ve",),
        "might": ("ve",),
        "must": ("ve",),
    }
    ambiguous = {"hell", "well", "were", "wed", "shed", "shell", "ill", "its", "lets", "whore", "id"}
    for word, suffixes in pronoun_forms.items():
        for suffix in suffixes:
            joined = word + suffix
            if joined not in ambiguous:  # real words such as "well" or "its" stay as they are
                table[joined] = f"{word}'{suffix}"
    table.update({"oclock": "o'clock", "yall": "y'all", "maam": "ma'am"})
    for double in ("i'd've", "you'd've", "he'd've", "she'd've", "it'd've", "we'd've", "they'd've", "who'd've"):
        word = double.split("'")[0]
        table[f"{word}dve"] = double
        table[f"{word}'dve"] = double
        table[f"{word}d've"] = double
    return table


CONTRACTIONS = _contraction_table()


def _punctuation(text: str) -> str:
    """Punctuation rule of the VQA normalization (see the module docstring)."""
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in VQA_PUNCTUATION:
        if mark not in out:
            continue
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if (delete_all or touches_space) else " ")
    return _LONE_PERIOD.sub("", out)


def _words(text: str) -> str:
    """Word rule of the VQA normalization: lower case, number words, articles, contractions."""
    kept = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        kept.append(CONTRACTIONS.get(word, word))
    return " ".join(kept)


def normalize_vqa_answer(text: str) -> str:
    """Normalize an answer the way the VQA evaluation does (see the module docstring).

    Examples: ``"Two."`` -> ``"2"``, ``"The dog"`` -> ``"dog"``, ``"1,000"`` -> ``"1000"``, ``"dont"`` ->
    ``"don't"``, ``"black/white"`` -> ``"black white"``, ``"3.5"`` -> ``"3.5"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (normally 10), both normalized here.

    Returns:
        The mean over leave-one-human-out subsets of ``min(matches / 3, 1)``; 0 without human answers.
    """
    if not human_answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    same = [normalize_vqa_answer(a) == pred for a in human_answers]
    total = sum(same)
    return sum(min((total - s) / 3.0, 1.0) for s in same) / len(same)


# --- short answers ----------------------------------------------------------------------------------------------


def normalize_short_answer(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding whitespace and trailing periods removed."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def exact_match(prediction: str, answer: str) -> bool:
    """Both strings equal after ``normalize_short_answer`` (GQA, the demo questions)."""
    return normalize_short_answer(prediction) == normalize_short_answer(answer)


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; 0 for no values."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# --- yes / no ---------------------------------------------------------------------------------------------------

NEGATIONS = frozenset(
    {"no", "not", "none", "nothing", "nobody", "never", "neither", "nor", "cannot"}
    | {"isn't", "aren't", "doesn't", "don't", "wasn't", "weren't", "can't", "hasn't", "haven't"}
)
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z']+")


def _first_sentence_words(text: str) -> list[str]:
    first = _SENTENCE_END.split(text.strip().lower(), maxsplit=1)[0]
    return _WORD.findall(first)


def parse_yes_no(text: str, strict: bool = False) -> str | None:
    """Read a yes/no decision from a free answer.

    Rules: the first word of the answer decides when it is ``yes`` or ``no``. Otherwise (``strict=False``, POPE)
    the first sentence is a no when it holds a negation word (``no``, ``not``, ``none``, ``isn't`` ...), else a yes
    ("There is a dog." is a yes). With ``strict=True`` (MME) any other first word gives None.

    Returns:
        ``"yes"``, ``"no"`` or None (strict mode only, or an empty answer).
    """
    words = _first_sentence_words(text)
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]
    if strict:
        return None
    return "no" if any(w in NEGATIONS for w in words) else "yes"


def binary_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """POPE metrics with "yes" as the positive class.

    Args:
        predictions: parsed answers (``"yes"``, ``"no"`` or None; None counts as neither, so it is always wrong).
        labels: ``"yes"`` / ``"no"``.

    Returns:
        accuracy, precision, recall, f1 and yes_ratio (share of "yes" predictions), as fractions.
    """
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predictions, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predictions, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(predictions, labels))
    fn = sum(p != "yes" and y == "yes" for p, y in zip(predictions, labels))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(p == "yes" for p in predictions) / n if n else 0.0,
    }


def mme_subtask_score(correct_by_image: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """MME score of one subtask from the correctness of each image's questions (two per image).

    Returns:
        acc (percent of questions right), acc_plus (percent of images with every question right) and
        score = acc + acc_plus (at most 200).
    """
    flat = [c for answers in correct_by_image.values() for c in answers]
    acc = 100.0 * mean(flat)
    acc_plus = 100.0 * mean(all(answers) for answers in correct_by_image.values())
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}


# --- multiple choice --------------------------------------------------------------------------------------------

_BARE_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:,)]|$)")
_LEADING_LETTER = re.compile(r"^\(?([A-Z])\)?\s")
_STATED_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*\(?([A-Z])\b\)?")


def parse_option_letter(text: str, options: Mapping[str, str]) -> str | None:
    """Read the chosen option letter from an answer.

    Rules, in order: the answer is a letter of ``options``, alone or followed by punctuation (``"B"``, ``"B."``,
    ``"(B)"``, ``"B) cat"``); its text equals one option's text (case and a trailing period ignored); it starts
    with a letter and a space (``"B cat"``); it states a letter (``"The answer is B"``). Anything else is None
    (counted wrong).

    Args:
        text: the model's answer.
        options: letter -> option text, e.g. ``{"A": "cat", "B": "dog"}``.
    """
    answer = text.strip()
    match = _BARE_LETTER.match(answer)
    if match and match.group(1) in options:
        return match.group(1)
    plain = normalize_short_answer(answer)
    for letter, option in options.items():
        if plain and plain == normalize_short_answer(str(option)):
            return letter
    match = _LEADING_LETTER.match(answer)
    if match and match.group(1) in options:
        return match.group(1)
    match = _STATED_LETTER.search(answer)
    if match and match.group(1) in options:
        return match.group(1)
    return None


def option_letters(count: int) -> list[str]:
    """The first ``count`` option letters: A, B, C ..."""
    if not 0 <= count <= 26:
        raise ValueError(f"cannot letter {count} options")
    return [chr(ord("A") + i) for i in range(count)]


def circular_accuracy(correct_by_question: Mapping[str, Sequence[bool]]) -> float:
    """Circular evaluation: a question counts only if every rotation of its options was answered right."""
    return mean(bool(rounds) and all(rounds) for rounds in correct_by_question.values())


def choice_hits(items: Iterable[tuple[str, Mapping[str, str], str]]) -> tuple[list[float], int]:
    """Grade multiple-choice answers.

    Args:
        items: (answer text, {letter: option text}, correct letter) per question.

    Returns:
        (1.0 / 0.0 per question, number of answers in which no option letter could be read).
    """
    hits, unparsed = [], 0
    for text, options, correct in items:
        letter = parse_option_letter(text, options)
        unparsed += letter is None
        hits.append(float(letter == correct))
    return hits, unparsed
