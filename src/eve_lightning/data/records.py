"""Source records for the shard writer: reading LLaVA / caption annotation files and preparing each record.

``read_annotations`` yields every record of a ``.json`` list or a ``.jsonl`` file (a line that does not parse is
yielded as a ``BadRecord``). ``prepare_record`` turns one record into shard members, or a ``Skipped`` with a
reason: the image is opened (header first, to enforce the pixel cap before decoding), fully decoded once to
catch truncated files, optionally resized to the exact EVE band size of the target resolution, and re-encoded
only when needed (JPEG sources that need no change are copied byte for byte).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from eve_lightning.constants import MAX_IMAGE_PIXELS
from eve_lightning.data.conversation import (
    ConversationError,
    Turn,
    caption_turns,
    normalize_conversation,
    turns_to_json,
    word_count,
)
from eve_lightning.data.geometry import band_geometry, evev2_geometry
from eve_lightning.data.image import to_rgb
from eve_lightning.data.shards import encode_json

RecordFormat = Literal["llava", "caption"]
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS  # larger images are skipped before decoding (well below Pillow's 89.5 M)
JPEG_QUALITY = 95
_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class BadRecord:
    """A line of a ``.jsonl`` file that is not valid JSON."""

    error: str


@dataclass(frozen=True)
class BuildOptions:
    """How records become shard samples.

    Attributes:
        fmt: ``llava`` (conversations, optional image) or ``caption`` (image + caption).
        images_dir: root that record image paths are relative to.
        max_side: if set, resize every image to the size training resizes it to: EVE v1 (672 or 1344) its exact
            band size at that resolution; EVEv2 (``family="evev2"``, a multiple of 32: 800 or 1600) its
            ``evev2_geometry`` size, where loading that size gives the same size again (``evev2_stored_size``).
        upscale: with ``max_side``, also enlarge smaller images (so loading never resizes); else keep them.
        max_pixels: images with more pixels are skipped before decoding.
        family: ``eve`` or ``evev2``: whose resize rule ``max_side`` follows.
    """

    fmt: RecordFormat
    images_dir: str
    max_side: int | None = None
    upscale: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    family: str = "eve"


@dataclass(frozen=True)
class Prepared:
    """A record ready to be written: its members and the columns of the sidecar index."""

    index: int
    key: str
    members: list[tuple[str, bytes]]
    has_image: bool
    words: int
    width: int
    height: int


@dataclass(frozen=True)
class Skipped:
    """A record that was left out, with a reason code and a human-readable detail."""

    index: int
    record_id: str
    reason: str
    detail: str


def read_annotations(path: str | Path) -> Iterator[Any]:
    """Yield the records of a ``.json`` list (or ``{"data": [...]}``) or of a ``.jsonl`` file, in order."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    yield BadRecord(str(exc))
        return
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    yield from data


def _record_id(record: Any, index: int) -> str:
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return str(index)


def _resolve_image(images_dir: str, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ConversationError("bad_record", "image must be a non-empty path string")
    root = Path(images_dir).resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise ConversationError("bad_image_path", f"{rel!r} points outside the images folder")
    if not path.is_file():
        raise ConversationError("missing_image", str(rel))
    return path


def _image_member(path: Path, opts: BuildOptions) -> tuple[str, bytes, int, int]:
    """Return (ext, bytes, width, height) of the image as stored in the shard."""
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            # Our own cap (checked on the header, before decoding) decides; Pillow still refuses > 2x its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > opts.max_pixels:
                raise ConversationError("too_many_pixels", f"{width}x{height} > {opts.max_pixels} pixels")
            img.load()  # decode once: truncated or corrupt files fail here, not in training
    except ConversationError:
        raise
    except Image.DecompressionBombError as exc:
        raise ConversationError("too_many_pixels", str(exc)) from None
    except Exception as exc:
        raise ConversationError("unreadable_image", f"{path.name}: {exc}") from None
    fmt = img.format or ""
    target = (width, height)
    if opts.max_side is not None:
        if opts.family == "evev2":
            target = evev2_stored_size(width, height, opts.max_side)
        else:
            geom = band_geometry(width, height, opts.max_side)
            target = (geom.eve.width, geom.eve.height)
        if not opts.upscale and width <= target[0] and height <= target[1]:
            target = (width, height)
    if target == (width, height) and fmt in _KEEP_FORMATS:
        return _KEEP_FORMATS[fmt], data, width, height
    rgb = to_rgb(img)
    if target != (width, height):
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return "jpg", out.getvalue(), target[0], target[1]


def evev2_stored_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """The size to store an image at for EVEv2 training at ``max_size``: its training size, or its own size.

    EVEv2's training rule (``geometry.evev2_geometry``) takes the image's own size, so a stored image is only
    equivalent to its source when the rule gives the stored size back. That holds for most images, not for some
    elongated ones (a 174 x 4405 px image becomes 160 x 4032 at 800 px, which the rule would take to 160 x 4000;
    7 % of a grid of sides from 100 to 5000 px): those are stored at their own size, for the loader to resize from
    the source as without ``--max-side``.
    """
    geom = evev2_geometry(width, height, max_size, training=True)
    target = (geom.eve.width, geom.eve.height)
    again = evev2_geometry(*target, max_size, training=True)
    return target if (again.eve.width, again.eve.height) == target else (width, height)


def _turns(record: dict[str, Any], fmt: RecordFormat, has_image: bool) -> list[Turn]:
    if fmt == "caption":
        if not has_image:
            raise ConversationError("missing_image_field", "caption records need an image")
        caption = record.get("caption", record.get("text"))
        if caption is None and "conversations" in record:
            turns = normalize_conversation(record["conversations"], has_image=True)
            caption = next(t.text for t in turns if t.role == "gpt")
        if not isinstance(caption, str):
            raise ConversationError("bad_record", "caption record without a caption/text string")
        return caption_turns(caption)
    if "conversations" not in record:
        raise ConversationError("bad_record", "record has no conversations")
    return normalize_conversation(record["conversations"], has_image=has_image)


def prepare_record(index: int, record: Any, opts: BuildOptions) -> Prepared | Skipped:
    """Turn one annotation record into shard members, or explain why it is skipped.

    Args:
        index: position of the record in the annotation file (becomes the sample key).
        record: the parsed record (or a ``BadRecord``).
        opts: build options.

    Returns:
        ``Prepared`` or ``Skipped`` (never raises on bad input).
    """
    rid = _record_id(record, index)
    if isinstance(record, BadRecord):
        return Skipped(index, rid, "bad_json", record.error)
    if not isinstance(record, dict):
        return Skipped(index, rid, "bad_record", f"record is a {type(record).__name__}, not an object")
    try:
        has_image = record.get("image") is not None
        turns = _turns(record, opts.fmt, has_image)
        key = f"{index:09d}"
        members: list[tuple[str, bytes]] = []
        width = height = 0
        if has_image:
            ext, data, width, height = _image_member(_resolve_image(opts.images_dir, record["image"]), opts)
            members.append((ext, data))
        meta: dict[str, Any] = {"id": rid}
        if has_image:
            meta["image"] = record["image"]
        if opts.fmt == "caption":
            members.append(("txt", turns[-1].text.encode("utf-8")))
        else:
            meta["conversations"] = turns_to_json(turns)
        members.append(("json", encode_json(meta)))
        return Prepared(index, key, members, has_image, word_count(turns), width, height)
    except ConversationError as exc:
        return Skipped(index, rid, exc.reason, exc.detail)
