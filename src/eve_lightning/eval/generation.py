"""Batched greedy answers from an EVE model: questions in, answer strings out.

Each question is encoded with the chat engine (template and image view of the model's family), the prompts are
right-padded into one batch (text-only rows get a blank canvas and an all-zero mask; they have no image
placeholder, so their pixels are never read), and one ``generate_tokens`` call decodes the whole batch. Each
row's answer is its tokens up to the first EOS. Images are read and resized by a small thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from eve_lightning.eval.base import Question, open_question_image
from eve_lightning.inference.engine import ChatEngine
from eve_lightning.inference.generate import GenerationConfig, PromptTooLongError, generate_tokens
from eve_lightning.inference.loading import LoadedModel, load_model
from eve_lightning.utils.logging import get_logger

log = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pad_batch(encoded: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-pad single-row prompts (``ChatEngine.encode`` outputs) into one batch.

    Returns:
        input_ids [B, L], attention_mask [B, L], and pixel_values [B, 3, S, S] / pixel_mask [B, S, S] (None when
        no row has an image; zeros for the rows without one). S is the largest canvas side of the rows (EVE v1's
        canvases all have the model's size; EVEv2's are sized per image and are padded at the right and bottom).
    """
    device = encoded[0]["input_ids"].device
    width = max(e["input_ids"].shape[1] for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(encoded), width), dtype=torch.bool, device=device)
    for i, e in enumerate(encoded):
        n = e["input_ids"].shape[1]
        ids[i, :n] = e["input_ids"][0]
        mask[i, :n] = True
    batch: dict[str, torch.Tensor | None] = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": None,
        "pixel_mask": None,
    }
    with_image = [e for e in encoded if "pixel_values" in e]
    if with_image:
        ref = with_image[0]
        side = max(e["pixel_values"].shape[-1] for e in with_image)  # EVEv2 canvases differ per image
        pixels = torch.zeros((len(encoded), 3, side, side), dtype=ref["pixel_values"].dtype, device=device)
        masks = torch.zeros((len(encoded), side, side), dtype=ref["pixel_mask"].dtype, device=device)
        for i, e in enumerate(encoded):
            if "pixel_values" in e:
                n = e["pixel_values"].shape[-1]  # bands sit at the top-left, so a larger canvas keeps them whole
                pixels[i, :, :n, :n] = e["pixel_values"][0]
                masks[i, :n, :n] = e["pixel_mask"][0]
        batch["pixel_values"], batch["pixel_mask"] = pixels, masks
    return batch


class BatchAnswerer:
    """Callable that answers a batch of questions with one greedy generation.

    Args:
        engine: the chat engine (model, tokenizer, template).
        max_new_tokens: answer length limit.
        threads: image reading/encoding threads (0 or 1: in the calling thread).
    """

    def __init__(self, engine: ChatEngine, max_new_tokens: int = 128, threads: int = 4) -> None:
        self.engine = engine
        self.gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="eval-encode") if threads > 1 else None
        self.too_long = 0

    def _encode(self, question: Question) -> dict[str, torch.Tensor]:
        return self.engine.encode(open_question_image(question.image), [("user", question.prompt)])

    def _generate(self, encoded: Sequence[dict[str, torch.Tensor]]) -> list[str]:
        loaded = self.engine.loaded
        tok = loaded.tokenizer
        batch = pad_batch(encoded, tok.pad_id)
        steps = list(
            generate_tokens(
                loaded.vlm,
                batch["input_ids"],
                batch["attention_mask"],
                batch["pixel_values"],
                batch["pixel_mask"],
                self.engine.stop_id,
                self.gen,
                loaded.context_length,
            )
        )
        if not steps:
            return [""] * len(encoded)
        texts = []
        stop = self.engine.stop_id
        for row in torch.stack(steps, 1).tolist():
            if stop in row:
                row = row[: row.index(stop)]
            texts.append(tok.decode(row).strip())
        return texts

    def __call__(self, questions: Sequence[Question]) -> list[str]:
        """Answer the questions (same order). A prompt longer than the context gets an empty answer."""
        if self._pool is not None and len(questions) > 1:
            encoded = list(self._pool.map(self._encode, questions))
        else:
            encoded = [self._encode(q) for q in questions]
        try:
            return self._generate(encoded)
        except PromptTooLongError as err:
            if len(encoded) == 1:
                self.too_long += 1
                log.warning("question %s: %s; answered with an empty string", questions[0].qid, err)
                return [""]
        return [self(questions[i : i + 1])[0] for i in range(len(questions))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_answerer(
    device: str,
    *,
    model: str,
    template: str | None = None,
    dtype: str = "auto",
    max_new_tokens: int = 128,
    threads: int = 4,
) -> BatchAnswerer:
    """Load a model on ``device`` and wrap it in a ``BatchAnswerer`` (the worker-process factory of the runner).

    ``template`` None: the model family's chat template (``vicuna_v1`` for EVE v1, ``qwen2`` for EVEv2).
    """
    torch_dtype = None if dtype in ("auto", None) else DTYPES[dtype]
    loaded: LoadedModel = load_model(model, device=resolve_device(device), dtype=torch_dtype)
    return BatchAnswerer(ChatEngine(loaded, template=template), max_new_tokens=max_new_tokens, threads=threads)
