"""Tokenizer loading: a local HF tokenizer directory or a bare SentencePiece ``.model`` file, behind one interface.

The data pipeline needs only ``encode(text) -> ids`` without special tokens, plus the BOS/EOS/pad ids; templates
insert BOS and EOS as ids, never as text, so the result does not depend on how a tokenizer version parses
``</s>`` inside text (the root of the original "tokenization mismatch").

Backends:
- ``sentencepiece``: the SentencePiece model itself. This is exactly the slow LLaMA tokenizer the original used
  (``use_fast=False``, legacy): each text run gets the dummy-prefix space, text is never parsed for special
  tokens. ``auto`` picks it for any directory that ships a ``tokenizer.model`` (Vicuna, LLaMA-2, Mistral).
  Note: in transformers 5.x ``LlamaTokenizer`` is a re-implementation on ``tokenizers`` that differs from the
  SentencePiece model on some inputs (runs of spaces, text that starts with a space: ``" ASSISTANT:"`` loses its
  ``"▁"`` piece), so the ids would drift from the original's; labels stay exact with either backend.
- ``hf``: ``AutoTokenizer.from_pretrained(dir, local_files_only=True)`` for tokenizers without a SentencePiece
  model (e.g. Qwen's ``tokenizer.json``); special-token strings inside text are split, not parsed.

Nothing is ever downloaded: paths must exist locally.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

Backend = Literal["auto", "sentencepiece", "hf"]


def default_tokenizer_path() -> str:
    """Return the path of the LLaMA-style SentencePiece model shipped by ``mistral-common`` (32000 pieces).

    It is the default tokenizer of the demo and tiny setups (BOS=1, EOS=2, unk=0), so nothing is downloaded.

    Raises:
        FileNotFoundError: when mistral-common is not installed.
    """
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mistral-common is not installed: pip install mistral-common (dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common does not ship {path}")
    return str(path)


class TextTokenizer:
    """Common interface of the tokenizer backends.

    Attributes:
        bos_id: beginning-of-sequence id, or None when the tokenizer has none.
        eos_id: end-of-sequence id (appended after every supervised assistant turn).
        pad_id: id used to right-pad ``input_ids`` (unk, as the original, when the tokenizer defines no pad).
        vocab_size: number of ids.
        source: the path it was loaded from.
    """

    bos_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int
    source: str

    def encode(self, text: str) -> list[int]:
        """Tokenize ``text`` as one run: no BOS/EOS added, special-token strings treated as plain text."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Turn ids back into text (special tokens dropped)."""
        raise NotImplementedError

    def special_id(self, token: str) -> int | None:
        """The id of the single token spelled ``token`` (e.g. ``<|im_end|>``, ``</s>``), None when there is none."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, vocab={self.vocab_size})"


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece ``.model`` file used directly (the legacy slow LLaMA tokenizer behaviour)."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece as spm

        self.source = str(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=self.source)
        bos = self._sp.bos_id()
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = self._sp.eos_id()
        pad = self._sp.pad_id()
        self.pad_id = pad if pad >= 0 else max(self._sp.unk_id(), 0)
        self.vocab_size = self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text) if text else []

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def special_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if 0 <= i < self.vocab_size and self._sp.id_to_piece(i) == token else None

    def __getstate__(self) -> dict[str, Any]:  # processors are rebuilt from the file in DataLoader workers
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])


class HFTokenizer(TextTokenizer):
    """A local Hugging Face tokenizer directory."""

    def __init__(self, directory: str | Path) -> None:
        from transformers import AutoTokenizer

        self.source = str(directory)
        self._tok = AutoTokenizer.from_pretrained(self.source, local_files_only=True)
        self.bos_id = self._tok.bos_token_id
        if self._tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {directory} defines no EOS token")
        self.eos_id = int(self._tok.eos_token_id)
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else self._tok.unk_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.vocab_size = len(self._tok)

    @property
    def hf(self) -> Any:
        """The underlying transformers tokenizer."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=True))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i >= 0], skip_special_tokens=True)

    def special_id(self, token: str) -> int | None:
        i = self._tok.convert_tokens_to_ids(token)
        return int(i) if isinstance(i, int) and self._tok.convert_ids_to_tokens(i) == token else None


def load_tokenizer(path: str | Path | None = None, backend: Backend = "auto") -> TextTokenizer:
    """Load a tokenizer from a local path.

    Args:
        path: a HF tokenizer directory (e.g. a Vicuna-7B checkout) or a SentencePiece ``.model`` file; None means
            ``default_tokenizer_path()``.
        backend: ``auto`` (SentencePiece when a ``.model`` file is available, else HF), ``sentencepiece`` or
            ``hf``.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: when the path does not exist (hub ids are refused on purpose).
    """
    p = Path(path) if path is not None else Path(default_tokenizer_path())
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path {p} does not exist (only local tokenizers are loaded)")
    if p.is_file():
        if backend == "hf":
            raise ValueError("backend 'hf' needs a tokenizer directory, got a file")
        return SentencePieceTokenizer(p)
    sp_file = p / "tokenizer.model"
    if backend == "sentencepiece" or (backend == "auto" and sp_file.is_file()):
        if not sp_file.is_file():
            raise FileNotFoundError(f"{p} has no tokenizer.model for the sentencepiece backend")
        return SentencePieceTokenizer(sp_file)
    return HFTokenizer(p)


def tokenizer_files(source: str | None) -> list[str]:
    """Files that make up a tokenizer (a SentencePiece file or a folder's tokenizer files), for exports."""
    if not source:
        return []
    path = Path(source)
    if path.is_file():
        return [str(path)]
    names = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return [str(path / n) for n in names if (path / n).is_file()]
