"""Exact ids and label masks of the plain and vicuna_v1 templates with the real SentencePiece tokenizer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from eve_lightning.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_lightning.data.conversation import ConversationError, Turn, normalize_conversation
from eve_lightning.data.encoding import Encoded, encode_parts, expanded_length, fit_length
from eve_lightning.data.templates import (
    TEMPLATES,
    VICUNA_SYSTEM,
    SeparatorTemplate,
    Special,
    Text,
    get_template,
    register_template,
)
from eve_lightning.data.tokenizer import HFTokenizer, default_tokenizer_path, load_tokenizer

I = IGNORE_INDEX  # noqa: E741


def conv(*pairs: str, image: bool = True) -> list[Turn]:
    raw = [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]
    return normalize_conversation(raw, has_image=image)


def supervised_spans(enc: Encoded) -> list[list[int]]:
    spans, cur = [], []
    for tid, lab in zip(enc.input_ids.tolist(), enc.labels.tolist()):
        if lab != I:
            assert lab == tid
            cur.append(lab)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


def test_plain_exact_ids(tok):
    caption = "two shapes: a small red circle on the left and a large blue square on the right."
    enc = encode_parts(get_template("plain").render(conv("<image>\nDescribe.", caption)), tok)
    caption_ids = [989, 17187, 28747, 264, 1741, 2760, 9661, 356, 272, 1749, 304, 264, 2475, 5045, 7930]
    caption_ids += [356, 272, 1103, 28723, 13]  # "... on the right." + "\n" (byte token 0x0A)
    assert enc.input_ids.tolist() == [1, IMAGE_TOKEN_INDEX, *caption_ids]
    assert enc.labels.tolist() == [I, I, *caption_ids]
    assert enc.image_pos == 1
    assert tok.decode(caption_ids) == caption + "\n"  # human text discarded; caption and newline supervised


def test_vicuna_single_turn_exact(tok):
    enc = encode_parts(get_template("vicuna_v1").render(conv("What colour is the circle?\n<image>", "red.")), tok)
    prefix = tok.encode(VICUNA_SYSTEM + " USER: ")
    question = [28705, 13, 3195, 11474, 349, 272, 9661, 28804, 8602, 8048, 12738, 28747]  # "\nWhat ... ASSISTANT:"
    answer = [2760, 28723, 2]  # "▁red" "." </s>
    assert enc.input_ids.tolist() == [1, *prefix, IMAGE_TOKEN_INDEX, *question, *answer]
    assert enc.labels.tolist() == [I] * (2 + len(prefix) + len(question)) + answer
    assert prefix[-4:] == [2223, 725, 28747, 28705]  # "▁US" "ER" ":" "▁" — the image follows "USER: "


def test_vicuna_multi_turn_masks_every_prompt(tok):
    turns = conv(
        "<image>\nWhat colour is the circle?", "red.", "Where is it?", "on the left.", "And the square?", "no."
    )
    enc = encode_parts(get_template("vicuna_v1").render(turns), tok)
    assert supervised_spans(enc) == [[2760, 28723, 2], [356, 272, 1749, 28723, 2], [708, 28723, 2]]
    # every supervised span starts right after "ASSISTANT:" and rounds 2+ start with "USER:" after </s>
    ids = enc.input_ids.tolist()
    starts = [i for i in range(1, len(ids)) if enc.labels[i] != I and enc.labels[i - 1] == I]
    assert all(ids[s - 4 : s] == [8602, 8048, 12738, 28747] for s in starts)
    eos = [i for i, t in enumerate(ids) if t == 2]
    assert [ids[e + 1 : e + 4] for e in eos[:-1]] == [[2223, 725, 28747]] * 2
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and enc.num_label_tokens == 11


def test_image_placement_and_text_only(tok):
    vicuna = get_template("vicuna_v1")
    at_end = encode_parts(vicuna.render(conv("What colour is the circle?\n<image>", "red.")), tok)
    at_start = encode_parts(vicuna.render(conv("<image>\nWhat colour is the circle?", "red.")), tok)
    missing = encode_parts(vicuna.render(conv("What colour is the circle?", "red.")), tok)  # image attached
    assert at_end.input_ids.tolist() == at_start.input_ids.tolist() == missing.input_ids.tolist()
    text_only = encode_parts(vicuna.render(conv("Count from one to three.", "one, two, three.", image=False)), tok)
    assert IMAGE_TOKEN_INDEX not in text_only.input_ids and text_only.image_pos == -1
    assert tok.decode(supervised_spans(text_only)[0]) == "one, two, three."
    with pytest.raises(ConversationError) as err:
        conv("<image>\nWhat is it?", "a cat.", image=False)
    assert err.value.reason == "image_token_without_image"


def test_special_token_text_is_plain_text(tok):
    enc = encode_parts(get_template("vicuna_v1").render(conv("say </s> please", "ok.", image=False)), tok)
    assert enc.input_ids.tolist().count(2) == 1  # only the EOS after the answer


def test_straddling_token_is_supervised(tok):
    # The prompt ends in the middle of a word: the merged token belongs to the answer and is supervised.
    parts = [Special("bos", False), Text("ASSISTANT: re", False), Text("d.", True), Special("eos", True)]
    enc = encode_parts(parts, tok)
    pieces = [tok._sp.id_to_piece(int(t)) for t in enc.input_ids[1:]]
    assert pieces == ["▁ASS", "IST", "ANT", ":", "▁red", ".", "</s>"]
    assert enc.labels.tolist() == [I, I, I, I, I, 2760, 28723, 2]


@pytest.mark.parametrize("llama_config", [False, True])
def test_hf_backend_gives_identical_ids_and_labels(tok, tmp_path, llama_config):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(default_tokenizer_path(), folder / "tokenizer.model")
    if llama_config:  # a Vicuna-like folder: transformers 5 builds its own LlamaTokenizer class from the .model
        config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "bos_token": "<s>", "eos_token": "</s>"}
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "unk_token": "<unk>"}))
    assert load_tokenizer(folder).__class__.__name__ == "SentencePieceTokenizer"  # auto prefers the .model
    hf = load_tokenizer(folder, backend="hf")
    assert isinstance(hf, HFTokenizer) and (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (1, 2, 0, 32000)
    assert type(hf.hf).__name__ == ("LlamaTokenizer" if llama_config else "TokenizersBackend")
    convs = [
        conv("<image>\nWhat colour is the circle?", "red.", "Where is it?", "on the left."),
        conv("Describe the image.\n<image>", "two shapes: a small red circle  and  a héllo 🙂 square."),
        conv("Count from one to three.", "one, two, three.", image=False),
        conv("say </s> please", "ok.", image=False),
    ]
    for name in ("plain", "vicuna_v1"):
        for turns in convs:
            a = encode_parts(get_template(name).render(turns), tok)
            b = encode_parts(get_template(name).render(turns), hf)
            # the supervised text is exactly the answers (+ EOS) whatever the tokenizer class
            assert [tok.decode(x) for x in supervised_spans(a)] == [hf.decode(x) for x in supervised_spans(b)]
            if not llama_config or "  " not in turns[-1].text:
                assert a.input_ids.tolist() == b.input_ids.tolist()
                assert a.labels.tolist() == b.labels.tolist()
            else:  # transformers 5's LlamaTokenizer splits runs of spaces differently from SentencePiece
                assert a.input_ids.tolist() != b.input_ids.tolist()


def test_fit_length_truncates_after_the_image(tok):
    turns = conv("<image>\nDescribe the image.", " ".join(["red circle"] * 200))
    enc = encode_parts(get_template("vicuna_v1").render(turns), tok)
    n = len(enc.input_ids)
    fitted = fit_length(enc, 601, 700)
    assert isinstance(fitted, Encoded)
    assert expanded_length(len(fitted.input_ids), 601) == 700  # exactly the limit after expansion
    np.testing.assert_array_equal(fitted.input_ids, enc.input_ids[: 700 - 600])
    np.testing.assert_array_equal(fitted.labels, enc.labels[: 700 - 600])
    assert fit_length(enc, 601, n + 600) is enc  # fits: untouched
    assert fit_length(enc, 601, enc.image_pos + 600) == "image_does_not_fit"
    prompt_len = int(np.argmax(enc.labels != I))  # first supervised position
    assert fit_length(enc, 601, prompt_len + 600) == "all_masked"  # only the prompt fits
    assert isinstance(fit_length(enc, 601, prompt_len + 601), Encoded)  # one answer token fits


def test_registry():
    assert {"plain", "vicuna_v1"} <= set(TEMPLATES)
    with pytest.raises(ValueError):
        register_template(SeparatorTemplate(name="vicuna_v1", system="x"))
    with pytest.raises(KeyError):
        get_template("nope")
    with pytest.raises(TypeError):
        TEMPLATES["x"] = None  # type: ignore[index]
    prompt = get_template("vicuna_v1").render_prompt(conv("<image>\nWhat?", "a.", "And?", "b.")[:3])
    assert isinstance(prompt[-1], Text) and prompt[-1].text.endswith("ASSISTANT:")
