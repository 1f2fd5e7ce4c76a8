"""The web demo's server: one self-contained HTML page, a model-info endpoint and a streaming chat endpoint.

Endpoints:
  GET  /           the page (inline CSS and JS, locked down by a Content-Security-Policy: nothing is fetched
                   from anywhere but this server)
  GET  /api/info   which model is loaded, its canvas size, the generation defaults and limits (also a health check)
  POST /api/chat   multipart form: ``messages`` (JSON list of ``{"role": "user"|"assistant", "content": str}``,
                   alternating, ending with a user turn), optional ``image`` file, ``temperature`` (>= 0),
                   ``top_p`` (in (0, 1]), ``max_new_tokens`` (1 to MAX_NEW_TOKENS). Answers
                   ``text/event-stream``: ``delta`` events (``{"text": ...}``) as the tokens come, then one ``done``
                   event (``{"stats": engine.last_stats}``), or an ``error`` event (``{"message": ...}``) when
                   generation fails after it started.

The server keeps no conversation state: the page sends the whole conversation and its image with every turn, so
a reload or a second tab cannot mix conversations. Request errors (a file that is not an image, an upload over
the size limit, a conversation longer than the model's context, a malformed form) are JSON ``{"detail": ...}``
responses with a 4xx status and a message meant for the user. The sampling settings are checked by
`GenerationConfig` itself, the same check as the chat CLI's, so both accept exactly the same values.

Generation is blocking and CPU/GPU-bound: each request runs ``engine.stream`` in a worker thread, one generation
at a time (a lock), and hands the text deltas to the event loop through a queue, so the server stays responsive.
A client that disconnects (the page's Stop button) stops its generation after the next token.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from PIL import Image, ImageOps
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from eve_lightning.data.image import to_rgb
from eve_lightning.inference.engine import GenerationConfig, GenerationConfigError, PromptTooLongError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 2**20  # largest accepted image file
MAX_FORM_OVERHEAD = 2 * 2**20  # room for the conversation text and the other form fields
MAX_IMAGE_PIXELS = 60_000_000  # larger pictures are refused before their pixels are decoded
MAX_MESSAGE_CHARS = 100_000  # per message; the engine checks the real limit, the context length
MAX_NEW_TOKENS = 1024
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # decoders the server agrees to run
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
PAGE_FILE = "index.html"


class Engine(Protocol):
    """What the server needs from `eve_lightning.inference.engine.ChatEngine`."""

    model_name: str
    image_size: int
    last_stats: dict[str, Any]

    def stream(
        self, image: Image.Image | None, turns: list[tuple[str, str]], gen: GenerationConfig
    ) -> Iterable[str]: ...


class DemoRequestError(Exception):
    """A request the demo refuses, with the HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def parse_turns(messages: str) -> list[tuple[str, str]]:
    """Validate the page's conversation (JSON) and return the engine's turns.

    Raises:
        DemoRequestError: 400 when it is not a non-empty list of alternating user/assistant messages that starts
            and ends with a user message.
    """
    try:
        items = json.loads(messages)
    except json.JSONDecodeError:
        raise DemoRequestError(400, "messages must be a JSON list of {role, content} objects") from None
    if not isinstance(items, list) or not items:
        raise DemoRequestError(400, "messages must be a non-empty JSON list")
    turns = []
    for i, item in enumerate(items):
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected or not isinstance(content, str):
            raise DemoRequestError(400, f"message {i} must be a {expected} message with text content")
        if len(content) > MAX_MESSAGE_CHARS:
            raise DemoRequestError(400, f"message {i} is longer than {MAX_MESSAGE_CHARS} characters")
        turns.append((role, content))
    if turns[-1][0] != "user" or not turns[-1][1].strip():
        raise DemoRequestError(400, "the conversation must end with a non-empty user message")
    return turns


def load_image(data: bytes) -> Image.Image:
    """Decode an uploaded image safely and return it as RGB at its native resolution (EXIF rotation applied).

    Only common formats are decoded; the size is checked from the header before any pixel is decoded, and the
    file is verified before it is loaded.

    Raises:
        DemoRequestError: 400 when the bytes are not a readable image of an accepted format and size.
    """
    if not data:
        raise DemoRequestError(400, "the uploaded image is empty")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DemoRequestError(
                    400, f"the image is {width}x{height} px; the demo accepts up to {MAX_IMAGE_PIXELS // 10**6} MP"
                )
            probe.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))  # a new image: `img` is closed on leaving
    except DemoRequestError:
        raise
    except Exception as e:  # decoders raise many kinds of errors on hostile or broken files; all mean "not an image"
        log.info("rejected upload: %s: %s", type(e).__name__, e)
        raise DemoRequestError(
            400, "the upload is not a readable image (accepted: PNG, JPEG, WebP, GIF, BMP, TIFF)"
        ) from None


class BodyLimit:
    """ASGI middleware that refuses POST bodies over a byte limit (and bodies of unknown length) before reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal = None
            if length is None or not length.isdigit():
                refusal = 411, "send the request with a Content-Length header"
            elif int(length) > self.max_bytes:
                refusal = 413, f"the upload is {_mb(int(length))}; the limit is {_mb(MAX_UPLOAD_BYTES)} per image"
            if refusal is not None:
                await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class _Event:
    kind: str  # delta | done | error | end
    payload: Any = None
    status: int = 500  # of an error, when it comes before any text (then the request fails with it)


class _Generation:
    """One `engine.stream` call in a worker thread; its events reach the event loop through an asyncio queue."""

    def __init__(
        self,
        engine: Engine,
        lock: threading.Lock,
        image: Image.Image | None,
        turns: list[tuple[str, str]],
        gen: GenerationConfig,
    ) -> None:
        self._engine, self._lock = engine, lock
        self._args = (image, turns, gen)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        threading.Thread(target=self._run, name="eve-demo-generation", daemon=True).start()

    def _put(self, event: _Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening any more
            self.cancelled.set()

    def _run(self) -> None:
        with self._lock:
            stream = None
            try:
                if self.cancelled.is_set():
                    return
                stream = self._engine.stream(*self._args)
                for delta in stream:
                    if self.cancelled.is_set():
                        return
                    if delta:
                        self._put(_Event("delta", delta))
                self._put(_Event("done", dict(self._engine.last_stats or {})))
            except PromptTooLongError as e:
                self._put(_Event("error", str(e), status=400))
            except Exception as e:
                log.exception("generation failed")
                self._put(_Event("error", f"generation failed: {type(e).__name__}: {e}"))
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                self._put(_Event("end"))

    async def events(self) -> AsyncIterator[_Event]:
        """The events until the generation ends; leaving early (client gone) stops the generation."""
        try:
            while (event := await self._queue.get()).kind != "end":
                yield event
        finally:
            self.cancelled.set()


def _sse(event: _Event) -> bytes:
    """One server-sent event: ``delta`` {"text"}, ``done`` {"stats"} or ``error`` {"message"}."""
    key = {"delta": "text", "done": "stats"}.get(event.kind, "message")
    return f"event: {event.kind}\ndata: {json.dumps({key: event.payload})}\n\n".encode()


async def _event_stream(first: _Event, events: AsyncIterator[_Event]) -> AsyncIterator[bytes]:
    try:
        yield _sse(first)
        async for event in events:
            yield _sse(event)
    finally:
        await events.aclose()


def _read_page() -> str:
    return resources.files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _check_origin(request: Request) -> None:
    """Refuse cross-site requests: a page from another site may not make this server generate."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser (curl, scripts): nothing to protect against
        return
    if urlsplit(origin).netloc != request.headers.get("host"):
        raise DemoRequestError(403, f"cross-origin request from {origin} refused")


def create_app(engine: Engine, allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """Build the demo's web app around a loaded engine.

    Args:
        engine: a `ChatEngine` (or any object with its ``model_name``, ``image_size``, ``stream`` and
            ``last_stats``).
        allowed_hosts: Host header names the app answers (guards a loopback server against DNS rebinding);
            None answers any host (for a server bound to a public interface on purpose).

    Returns:
        The FastAPI app; serve it with uvicorn.
    """
    app = FastAPI(title="EVE web demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES + MAX_FORM_OVERHEAD)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    lock = threading.Lock()
    page = _read_page()
    page_headers = {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    info = {
        "model": engine.model_name,
        "image_size": engine.image_size,
        "defaults": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 256},
        "limits": {"max_new_tokens": MAX_NEW_TOKENS, "max_upload_bytes": MAX_UPLOAD_BYTES},
    }

    @app.exception_handler(DemoRequestError)
    async def _demo_error(_: Request, exc: DemoRequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/info")
    async def model_info() -> dict[str, Any]:
        return info

    @app.post("/api/chat", response_model=None)
    async def chat(
        request: Request,
        messages: Annotated[str, Form()],
        image: Annotated[UploadFile | None, File()] = None,
        temperature: Annotated[float, Form()] = 0.0,
        top_p: Annotated[float, Form()] = 1.0,
        max_new_tokens: Annotated[int, Form(le=MAX_NEW_TOKENS)] = 256,  # the range itself: GenerationConfig's
    ) -> StreamingResponse | JSONResponse:
        _check_origin(request)
        try:
            gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        except GenerationConfigError as e:
            raise DemoRequestError(400, str(e)) from None
        turns = parse_turns(messages)
        pil = None
        if image is not None:
            data = await image.read(MAX_UPLOAD_BYTES + 1)
            if len(data) > MAX_UPLOAD_BYTES:
                raise DemoRequestError(413, f"the image is over the {_mb(MAX_UPLOAD_BYTES)} limit")
            pil = load_image(data)
        events = _Generation(engine, lock, pil, turns, gen).events()
        first = await anext(events, _Event("error", "generation ended without a result"))
        if first.kind == "error":  # nothing streamed yet: fail the request itself
            await events.aclose()
            return JSONResponse({"detail": first.payload}, status_code=first.status)
        return StreamingResponse(
            _event_stream(first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
