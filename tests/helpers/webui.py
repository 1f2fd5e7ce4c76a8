"""Helpers of the web demo tests: engines that record what they get, and a live uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from PIL import Image

from eve_lightning.inference.engine import ChatEngine, GenerationConfig, PromptTooLongError


class RecordingEngine:
    """The real engine, remembering what each generation received (image size, turns, settings)."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine
        self.calls: list[dict[str, Any]] = []

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def image_size(self) -> int:
        return self.engine.image_size

    @property
    def last_stats(self) -> dict[str, float]:
        return self.engine.last_stats

    def stream(self, image, turns, gen):
        self.calls.append({"image": None if image is None else image.size, "turns": list(turns), "gen": gen})
        yield from self.engine.stream(image, turns, gen)


class FakeEngine:
    """Stands in for ChatEngine in the server tests: fixed deltas, and failures on request.

    A last user message containing "too long" raises PromptTooLongError; one containing "explode" fails after the
    first delta; "slow" sleeps between deltas.
    """

    model_name = "fake-eve"
    image_size = 672

    def __init__(self, deltas: tuple[str, ...] = ("Hello", ",", " brave", " new", " world", ".")) -> None:
        self.deltas = deltas
        self.calls: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        self.active = 0
        self.max_active = 0
        self.closed = 0

    def stream(self, image: Image.Image | None, turns: list[tuple[str, str]], gen: GenerationConfig):
        self.calls.append({"image": image, "turns": list(turns), "gen": gen})
        question = turns[-1][1]
        if "too long" in question:
            raise PromptTooLongError("the conversation takes 5000 positions; the model's context holds 2048")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for i, delta in enumerate(self.deltas[: gen.max_new_tokens]):
                if "slow" in question:
                    time.sleep(0.05)
                if "explode" in question and i == 1:
                    raise RuntimeError("the fake model exploded")
                yield delta
            self.last_stats = {
                "ttft_s": 0.01,
                "tokens_per_s": 100.0,
                "new_tokens": len(self.deltas),
                "prompt_tokens": 7,
            }
        finally:
            self.active -= 1
            self.closed += 1


class LiveServer:
    """A uvicorn server on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
