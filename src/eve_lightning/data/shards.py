"""WebDataset shard access: safe member allowlist, streaming reads of sample ranges, and the shard index.

A shard is a plain tar of WebDataset samples (members ``<key>.<ext>`` grouped by key). Only the extensions in
``ALLOWED_EXTENSIONS`` are ever read: images stay encoded bytes, ``json``/``txt``/``cls``/``id`` are parsed as
text. Any other member (``.pth``, ``.pkl``, ``.npy``, ``.gz`` ...) stops the read with ``UnsafeShardError`` before
its bytes are touched, so nothing is unpickled or ``torch.load``-ed; members are never written to disk.

Beside the shards, ``make_shards`` writes ``index.json`` (per-shard sample counts and totals) and one sidecar
``<shard>.idx.json`` per shard with per-sample keys, byte offsets, modality, word counts and image sizes; they
drive epoch lengths, the exact SFT pass plan and grouping.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eve_lightning.data.conversation import Turn, caption_turns, normalize_conversation

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("json", "txt", "cls", "id")
ALLOWED_EXTENSIONS = frozenset(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)
_CODE_EXECUTING = ("pth", "pt", "pkl", "pickle", "pyd", "npy", "npz", "ckpt", "bin", "joblib", "mp", "msgpack")
MAX_MEMBER_BYTES = 256 << 20  # a single member above this is treated as corrupt or hostile
INDEX_FILE = "index.json"
SIDECAR_SUFFIX = ".idx.json"


class UnsafeShardError(ValueError):
    """A shard member outside the allowlist (possibly pickled code): the shard is refused."""


class DataSourceError(FileNotFoundError):
    """A data source that names no usable shards (missing folder or index, empty pattern); the message says how."""


class DataSizeError(ValueError):
    """Too few samples for the configured layout (ranks, workers, batch size); found at start-up."""


class ShardFormatError(ValueError):
    """A shard that does not follow the expected layout (oversized member, duplicate image, key mismatch)."""


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the WebDataset way.

    The key ends at the first dot of the file name, the extension is the rest, lower-cased
    (``a/b.seg.png`` -> ``("a/b", "seg.png")``).
    """
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return name, ""
    return (f"{head}/{stem}" if head else stem), ext.lower()


def check_member(name: str, url: str) -> tuple[str, str]:
    """Return (key, ext) of an allowed member, else raise ``UnsafeShardError`` with a clear message."""
    key, ext = split_member_name(name)
    last = ext.rsplit(".", 1)[-1]
    if last in ALLOWED_EXTENSIONS:
        return key, last
    if last in _CODE_EXECUTING:
        raise UnsafeShardError(
            f"refusing shard {url}: member {name!r} is a .{last} file, which would be unpickled or "
            "torch.load-ed; eve_lightning decodes only images (jpg/png/webp), json, txt, cls and id members"
        )
    raise UnsafeShardError(
        f"refusing shard {url}: member {name!r} has extension {ext!r} outside the allowlist "
        f"{sorted(ALLOWED_EXTENSIONS)}"
    )


def _open(url: str, offset: int | None) -> tuple[Any, int | None]:
    """Open a shard for sequential reading; seek to ``offset`` when it is a local file."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", url) and not url.startswith("file:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb"), None  # remote or pipe: read from the start, skip samples
    path = url[5:] if url.startswith("file:") else url
    f = open(path, "rb")  # closed by the caller
    if offset:
        f.seek(offset)
        return f, offset
    return f, None


def iter_shard(
    url: str, start: int = 0, stop: int | None = None, offset: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the samples ``[start, stop)`` of one shard as raw WebDataset dicts.

    Args:
        url: local path (or ``file:``/``pipe:``/``http(s):`` URL).
        start: position of the first sample to yield (0-based within the shard).
        stop: position after the last sample to yield; None reads to the end.
        offset: byte offset of sample ``start`` (from the sidecar), used to seek in local files.

    Yields:
        ``{"__key__", "__url__", "__index__", <ext>: bytes, ...}`` per sample, in shard order.

    Raises:
        UnsafeShardError: on any member outside the allowlist.
        ShardFormatError: on oversized members.
    """
    fileobj, seeked = _open(url, offset)
    position = start - 1 if seeked is not None else -1
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                key, ext = check_member(info.name, url)
                if current is None or key != current["__key__"]:
                    if current is not None and position >= start:
                        yield current
                    position += 1
                    if stop is not None and position >= stop:
                        return
                    current = {"__key__": key, "__url__": url, "__index__": position}
                if position < start:
                    continue  # the stream skips the unread member data
                if info.size > MAX_MEMBER_BYTES:
                    raise ShardFormatError(f"{url}: member {info.name} has {info.size} bytes")
                if ext in current:
                    raise ShardFormatError(f"{url}: duplicate member {info.name}")
                member = tf.extractfile(info)
                assert member is not None
                current[ext] = member.read()
                tf.members = []  # streaming: do not keep every header in memory
            if current is not None and position >= start and (stop is None or position < stop):
                yield current
    finally:
        fileobj.close()


@dataclass
class ShardSample:
    """A decoded shard sample: encoded image bytes (if any) and its conversation."""

    key: str
    url: str
    index: int
    image: bytes | None
    turns: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)


def decode_sample(raw: dict[str, Any]) -> ShardSample:
    """Decode the allowlisted members of a raw sample into a ``ShardSample``.

    Conversations come from ``json["conversations"]`` (LLaVA layout), else from a caption in ``txt`` or
    ``json["caption"]``.

    Raises:
        UnsafeShardError: for members outside the allowlist (defence in depth, ``iter_shard`` checks first).
        ConversationError: when the text is not a usable conversation.
    """
    image: bytes | None = None
    meta: dict[str, Any] = {}
    caption: str | None = None
    for ext, value in raw.items():
        if ext.startswith("__"):
            continue
        if ext in IMAGE_EXTENSIONS:
            if image is not None:
                raise ShardFormatError(f"{raw['__url__']}: sample {raw['__key__']} has two images")
            image = value
        elif ext == "json":
            meta = json.loads(value.decode("utf-8"))
        elif ext == "txt":
            caption = value.decode("utf-8")
        elif ext in ("cls", "id"):
            meta.setdefault(ext, value.decode("utf-8").strip())
        else:
            raise UnsafeShardError(f"refusing member .{ext} of sample {raw['__key__']} in {raw['__url__']}")
    if "conversations" in meta:
        turns = normalize_conversation(meta["conversations"], has_image=image is not None)
    else:
        turns = caption_turns(caption if caption is not None else str(meta.get("caption", "")))
    return ShardSample(raw["__key__"], raw["__url__"], raw["__index__"], image, turns, meta)


@dataclass
class ShardInfo:
    """One shard and (when its sidecar was loaded) its per-sample columns.

    Attributes:
        url: path or URL of the tar.
        num_samples: sample count.
        keys: per-sample keys, or None.
        offsets: int64 [n] byte offset of each sample's first member, or None.
        has_image: bool [n], or None.
        words: int64 [n] whitespace word counts over all turns, or None.
    """

    url: str
    num_samples: int
    keys: list[str] | None = None
    offsets: np.ndarray | None = None
    has_image: np.ndarray | None = None
    words: np.ndarray | None = None

    @property
    def has_columns(self) -> bool:
        return self.has_image is not None and self.words is not None


def sidecar_path(tar_path: str) -> str:
    """Return the sidecar index path of a shard."""
    return (tar_path[:-4] if tar_path.endswith(".tar") else tar_path) + SIDECAR_SUFFIX


def read_sidecar(tar_path: str) -> dict[str, Any] | None:
    """Read a shard's sidecar, or None when it has none."""
    path = sidecar_path(tar_path)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _info_from_sidecar(url: str, side: dict[str, Any]) -> ShardInfo:
    return ShardInfo(
        url=url,
        num_samples=len(side["keys"]),
        keys=list(side["keys"]),
        offsets=np.asarray(side["offsets"], dtype=np.int64),
        has_image=np.asarray(side["has_image"], dtype=bool),
        words=np.asarray(side["words"], dtype=np.int64),
    )


def scan_shard(url: str) -> ShardInfo:
    """Count the samples of a shard without a sidecar by streaming it (keys only, no decoding)."""
    keys = [raw["__key__"] for raw in iter_shard(url)]
    return ShardInfo(url, len(keys), keys=keys)


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [x for i in range(int(lo), int(hi) + 1) for x in _expand_braces(f"{head}{i:0{width}d}{tail}")]


def resolve_shards(source: str | Sequence[str], columns: bool = False) -> list[ShardInfo]:
    """Find the shards of a data source.

    Args:
        source: a directory written by ``make_shards`` (holding ``index.json``), an ``index.json`` path, a glob or
            brace pattern of tars (``dir/shard-{000000..000009}.tar``), or a list of those.
        columns: also load the per-sample sidecar columns (needed by the exact pass and grouping); shards
            without a sidecar are scanned to count their samples.

    Returns:
        Shards in a stable order.
    """
    if not isinstance(source, str):
        return [info for s in source for info in resolve_shards(s, columns)]
    if not source.strip():
        raise DataSourceError(
            "the data source is empty: set data.train_shards (and data.val_shards) to a folder written by "
            "`python -m eve_lightning.data.make_shards`"
        )
    path = Path(source)
    if "://" not in source and not any(c in source for c in "*?[{") and not path.exists():
        raise DataSourceError(
            f"{path} does not exist: build shards there with `python -m eve_lightning.data.make_shards --out {path} "
            "...`, or point the data config at a folder it wrote"
        )
    if path.is_dir() or path.name == INDEX_FILE:
        index_path = path / INDEX_FILE if path.is_dir() else path
        if not index_path.is_file():
            what = "does not exist" if not index_path.parent.exists() else f"has no {INDEX_FILE}"
            raise DataSourceError(
                f"{index_path.parent} {what}: build shards there with `python -m eve_lightning.data.make_shards "
                f"--out {index_path.parent} ...`, or point the data config at a folder it wrote"
            )
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        urls = [str(index_path.parent / s["file"]) for s in index["shards"]]
        counts = [int(s["num_samples"]) for s in index["shards"]]
    else:
        urls = sorted(u for p in _expand_braces(source) for u in (glob.glob(p) or ([p] if "://" in p else [])))
        counts = [-1] * len(urls)
    infos: list[ShardInfo] = []
    for url, count in zip(urls, counts):
        side = read_sidecar(url) if (columns or count < 0) and "://" not in url else None
        if side is not None:
            info = _info_from_sidecar(url, side)
        elif count >= 0:
            info = ShardInfo(url, count)
        else:
            info = scan_shard(url)
        infos.append(info)
    if not infos:
        raise DataSourceError(f"no shards found for {source!r}: give a folder written by make_shards or a tar pattern")
    return infos


def read_index(directory: str | Path) -> dict[str, Any]:
    """Return the parsed ``index.json`` of a shard directory."""
    with open(Path(directory) / INDEX_FILE, encoding="utf-8") as f:
        return json.load(f)


def encode_json(obj: Any) -> bytes:
    """Serialize ``obj`` to compact UTF-8 JSON bytes."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """Return a reproducible tar header (fixed mtime/owner/mode) and payload for ``name``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    return info, io.BytesIO(data)
