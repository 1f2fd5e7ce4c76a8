"""EVEv2's templates (qwen2, qwen2_plain): exact ids and label masks with Qwen's real vocabulary.

The tokenizer folder is built from the Qwen BPE ranks that the ``dashscope`` package ships (``qwen_tokenizer_dir``)
and loaded through ``load_tokenizer``, as a downloaded Qwen2.5-7B-Instruct tokenizer is.
"""

from __future__ import annotations

import pytest

from eve_lightning.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from eve_lightning.data.conversation import Turn, normalize_conversation
from eve_lightning.data.encoding import encode_parts
from eve_lightning.data.templates import QWEN2_END, VICUNA_SYSTEM, get_template
from eve_lightning.data.tokenizer import HFTokenizer, load_tokenizer

I = IGNORE_INDEX  # noqa: E741
IMG = IMAGE_TOKEN_INDEX
IM_END = 151645


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer_dir) -> HFTokenizer:
    tok = load_tokenizer(qwen_tokenizer_dir)
    assert isinstance(tok, HFTokenizer)
    return tok


def two_turns() -> list[Turn]:
    raw = [
        {"from": "human", "value": "What colour is the circle?\n<image>"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "How many squares?"},
        {"from": "gpt", "value": "Two squares."},
    ]
    return normalize_conversation(raw, has_image=True)


def test_the_loader_reads_the_qwen_folder_as_qwen2_5_instruct(qwen):
    assert (qwen.bos_id, qwen.eos_id, qwen.pad_id, qwen.vocab_size) == (None, IM_END, 151643, 151646)
    assert qwen.special_id(QWEN2_END) == IM_END and qwen.special_id("<|im_start|>") == 151644
    assert qwen.special_id("<|im_sep|>") is None and qwen.special_id("hello") == 14990  # any single token
    assert qwen.encode("Hello world") == [9707, 1879]
    assert qwen.encode("<|im_end|>") != [IM_END]  # special-token text in data stays plain text


def test_qwen2_two_turns_with_an_image_exact_ids_and_labels(qwen):
    enc = encode_parts(get_template("qwen2").render(two_turns()), qwen)
    system = [32, 6236, 1948, 264, 22208, 1196, 323, 458, 20443, 11229, 17847, 13]  # "A chat ... assistant."
    system += [576, 17847, 6696, 10950, 11, 11682, 11, 323, 47787, 11253, 311, 279, 1196, 594, 4755, 13]
    user1 = [13872, 25, 220, IMG, 198, 3838, 12463, 374, 279, 12671, 30]  # " USER: " <image> "\nWhat colour ... ?"
    assistant = [35560, 3846, 2821, 25]  # " ASSISTANT:"
    answer1 = [3731, 13, IM_END]  # " Red." <|im_end|>
    user2 = [6448, 25, 2585, 1657, 31340, 30]  # "USER: How many squares?"
    answer2 = [9043, 31340, 13, IM_END]  # " Two squares." <|im_end|>
    ids = [*system, *user1, *assistant, *answer1, *user2, *assistant, *answer2]
    assert enc.input_ids.tolist() == ids  # no BOS: Qwen's tokenizer has none
    masked = len(system) + len(user1) + len(assistant)
    labels = [I] * masked + answer1 + [I] * (len(user2) + len(assistant)) + answer2
    assert enc.labels.tolist() == labels  # only the answers and their <|im_end|> are supervised
    assert enc.image_pos == len(system) + 3
    assert qwen.decode([t for t in ids if t >= 0]).startswith(VICUNA_SYSTEM + " USER: \nWhat colour")


def original_qwen2(turns: list[Turn], qwen: HFTokenizer) -> tuple[list[int], list[int]]:
    """EVEv2's own recipe, re-stated: one prompt string (conv_qwen_v2), tokenized around <image>, rounds masked.

    The prompt is ``system " " + "USER: " q " " + "ASSISTANT: " a "<|im_end|>" ...``, tokenized with the special
    tokens parsed; each round (split on <|im_end|>) masks its instruction (up to " ASSISTANT:") and counts one token
    for the <|im_end|> that ends it.
    """
    prompt = VICUNA_SYSTEM + " "
    for i, turn in enumerate(turns):
        role, end = ("USER", " ") if i % 2 == 0 else ("ASSISTANT", QWEN2_END)
        prompt += f"{role}: {turn.text}{end}"

    def tokenize(text: str) -> list[int]:
        ids: list[int] = []
        for j, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            ids += [IMG] if j else []
            ids += qwen.hf(chunk).input_ids
        return ids

    ids = tokenize(prompt)
    labels = list(ids)
    cur = 0
    for round_text in prompt.split(QWEN2_END):
        if not round_text:
            break
        instruction = round_text.split(" ASSISTANT:")[0] + " ASSISTANT:"
        n_instruction = len(tokenize(instruction))
        labels[cur : cur + n_instruction] = [I] * n_instruction
        cur += len(tokenize(round_text)) + 1
    assert cur == len(ids)  # the original's "tokenization mismatch" check
    return ids, labels


@pytest.mark.parametrize("image", [True, False])
def test_qwen2_equals_the_original_recipe(qwen, image):
    raw = [
        {"from": "human", "value": "<image>\nDescribe the picture in detail, please."},
        {"from": "gpt", "value": "Three shapes:  a small red circle,\na large blue square and a tiny green triangle."},
        {"from": "human", "value": "Which one is on the left? Answer with one word."},
        {"from": "gpt", "value": "circle"},
        {"from": "human", "value": "Count them: 1, 2, 3..."},
        {"from": "gpt", "value": "3 (three)."},
    ]
    if not image:
        raw[0]["value"] = raw[0]["value"].replace("<image>\n", "")
    turns = normalize_conversation(raw, has_image=image)
    enc = encode_parts(get_template("qwen2").render(turns), qwen)
    ids, labels = original_qwen2(turns, qwen)
    assert enc.input_ids.tolist() == ids
    assert enc.labels.tolist() == labels


def test_qwen2_plain_caption_exact_ids(qwen):
    turns = [Turn("human", "<image>\n"), Turn("gpt", "  a red circle and two squares. ")]
    enc = encode_parts(get_template("qwen2_plain").render(turns), qwen)
    caption = [64, 2518, 12671, 323, 1378, 31340, 624]  # "a red circle and two squares" ".\n": stripped, newline
    assert enc.input_ids.tolist() == [IMG, *caption]  # <image> first: no BOS with Qwen
    assert enc.labels.tolist() == [I, *caption]
    assert get_template("qwen2_plain").requires_image


def test_qwen2_with_a_tokenizer_without_im_end_closes_answers_with_its_eos(tok):
    assert tok.special_id(QWEN2_END) is None and tok.special_id("</s>") == 2
    enc = encode_parts(get_template("qwen2").render(two_turns()), tok)
    supervised = [t for t, lab in zip(enc.input_ids.tolist(), enc.labels.tolist()) if lab != I]
    assert supervised.count(2) == 2 and supervised[-1] == 2  # each answer ends with </s>
    assert enc.input_ids.tolist()[0] == 1  # this tokenizer has a BOS: inserted, not supervised
    vicuna = encode_parts(get_template("vicuna_v1").render(two_turns()), tok)
    assert enc.input_ids.tolist() == vicuna.input_ids.tolist()  # the same layout as vicuna_v1 here
    assert enc.labels.tolist() == vicuna.labels.tolist()
