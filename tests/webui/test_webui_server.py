"""The web demo's server without a browser: page, model info, streaming, request errors, the CLI's entry."""

from __future__ import annotations

import io
import json
import re
import socket
import threading

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from eve_lightning.inference.engine import ChatEngine
from eve_lightning.inference.generate import GenerationConfig, GenerationConfigError
from eve_lightning.webui import server
from eve_lightning.webui.__main__ import main
from eve_lightning.webui.server import create_app
from tests.helpers.ports import free_port
from tests.helpers.webui import FakeEngine


def png_bytes(width: int = 900, height: int = 700, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def events(body: str) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    out = []
    for block in body.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def ask(client, question="What is in the picture?", history=(), image=None, **form):
    messages = [*history, {"role": "user", "content": question}]
    files = {"image": ("photo.png", image, "image/png")} if image is not None else None
    return client.post("/api/chat", data={"messages": json.dumps(messages), **form}, files=files)


@pytest.fixture
def client(fake_engine):
    with TestClient(create_app(fake_engine), base_url="http://127.0.0.1") as c:
        yield c


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing is loaded from anywhere else: no external script, style, font or image.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "@import" not in r.text and "url(" not in r.text
    for element in ("file-input", "prompt", "send", "regenerate", "clear", "temperature", "top-p", "max-new-tokens"):
        assert f'id="{element}"' in r.text


def test_info_names_the_model(client):
    info = client.get("/api/info").json()
    assert info["model"] == "fake-eve" and info["image_size"] == 672
    assert info["defaults"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 256}
    assert info["limits"]["max_new_tokens"] == 1024


def test_chat_streams_deltas_then_stats(client, fake_engine):
    r = ask(client, image=png_bytes(), temperature="0.7", top_p="0.9", max_new_tokens="300")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert [e for e, _ in evs] == ["delta"] * 6 + ["done"]
    assert "".join(d["text"] for e, d in evs if e == "delta") == "Hello, brave new world."
    assert evs[-1][1]["stats"]["tokens_per_s"] == 100.0
    call = fake_engine.calls[-1]
    assert call["image"].size == (900, 700) and call["image"].mode == "RGB"  # native resolution, not resized
    assert call["turns"] == [("user", "What is in the picture?")]
    gen = call["gen"]
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.7, 0.9, 300)


def test_defaults_multi_turn_and_text_only(client, fake_engine):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    r = ask(client, "And now?", history=history)
    assert r.status_code == 200 and events(r.text)[-1][0] == "done"
    call = fake_engine.calls[-1]
    assert call["image"] is None
    assert call["turns"] == [("user", "Hi"), ("assistant", "Hello."), ("user", "And now?")]
    assert (call["gen"].temperature, call["gen"].top_p, call["gen"].max_new_tokens) == (0.0, 1.0, 256)


def test_images_of_any_mode_arrive_as_rgb(client, fake_engine):
    for mode in ("L", "RGBA", "P"):
        assert ask(client, image=png_bytes(64, 48, mode)).status_code == 200
        assert fake_engine.calls[-1]["image"].mode == "RGB" and fake_engine.calls[-1]["image"].size == (64, 48)


def test_exif_rotation_is_applied(client, fake_engine):
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert ask(client, image=buf.getvalue()).status_code == 200
    assert fake_engine.calls[-1]["image"].size == (20, 40)  # as the photo is shown, not as it is stored


def test_prompt_too_long_is_a_readable_error(client):
    r = ask(client, "this question is too long")
    assert r.status_code == 400
    assert r.json()["detail"] == "the conversation takes 5000 positions; the model's context holds 2048"
    assert ask(client).status_code == 200  # the server goes on


def test_prompt_too_long_with_the_real_engine(engine):
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as c:
        r = ask(c, "word " * 5000, image=png_bytes(64, 64))  # > 4096 positions
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "context" in detail and "Traceback" not in detail


def test_failure_after_streaming_started_is_an_error_event(client):
    evs = events(ask(client, "explode please").text)
    assert evs[0] == ("delta", {"text": "Hello"})
    assert evs[-1][0] == "error" and "exploded" in evs[-1][1]["message"]
    assert ask(client).status_code == 200


@pytest.mark.parametrize(
    "payload, needle",
    [
        (b"this is not an image", "not a readable image"),
        (b"", "empty"),
        (png_bytes(64, 64)[:200], "not a readable image"),  # truncated PNG
    ],
)
def test_upload_that_is_not_an_image_is_a_400(client, fake_engine, payload, needle):
    r = ask(client, image=payload)
    assert r.status_code == 400 and needle in r.json()["detail"]
    assert not fake_engine.calls


def test_oversized_uploads_are_refused(client, monkeypatch):
    big = b"\0" * (server.MAX_UPLOAD_BYTES + server.MAX_FORM_OVERHEAD + 1)
    r = ask(client, image=big)
    assert r.status_code == 413 and "limit is 20.0 MB" in r.json()["detail"]
    monkeypatch.setattr(server, "MAX_IMAGE_PIXELS", 100)
    r = ask(client, image=png_bytes(20, 10))
    assert r.status_code == 400 and "20x10 px" in r.json()["detail"]


@pytest.mark.parametrize(
    "form, needle",
    [
        ({"temperature": "-1"}, "temperature must be >= 0"),
        ({"temperature": "nan"}, "temperature must be >= 0"),
        ({"temperature": "warm"}, "temperature"),
        ({"top_p": "0"}, "top_p must be in (0, 1]"),
        ({"top_p": "-0.1"}, "top_p must be in (0, 1]"),
        ({"top_p": "1.01"}, "top_p must be in (0, 1]"),
        ({"max_new_tokens": "0"}, "max_new_tokens"),
        ({"max_new_tokens": "5000"}, "max_new_tokens"),
        ({"messages": "not json"}, "JSON"),
        ({"messages": "[]"}, "non-empty"),
        ({"messages": json.dumps([{"role": "assistant", "content": "Hi"}])}, "message 0 must be a user message"),
        ({"messages": json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])}, "end"),
        ({"messages": json.dumps([{"role": "user", "content": "   "}])}, "non-empty user message"),
    ],
)
def test_malformed_requests_are_400_with_a_message(client, fake_engine, form, needle):
    data = {"messages": json.dumps([{"role": "user", "content": "Hi"}]), **form}
    r = client.post("/api/chat", data=data)
    assert r.status_code == 400 and needle in r.json()["detail"], r.json()
    assert fake_engine.calls == []  # refused before any generation


@pytest.mark.parametrize(
    "settings",
    [{"top_p": 0.0, "temperature": 1.0}, {"temperature": -1.0}, {"top_p": 1.5}, {"max_new_tokens": 0}],
)
def test_sampling_settings_are_checked_by_the_engine_config_as_in_the_cli(client, settings):
    """The server refuses exactly what GenerationConfig refuses (the chat CLI's check), with its very message."""
    with pytest.raises(GenerationConfigError) as refused:
        GenerationConfig(**settings)
    r = ask(client, **{k: str(v) for k, v in settings.items()})
    assert r.status_code == 400 and r.json()["detail"] == str(refused.value)


def test_every_setting_the_page_offers_is_accepted(client, fake_engine):
    """The sliders' ends (top-p starts above 0) and a temperature above the slider, as the CLI allows."""
    page = client.get("/").text
    top_p_min = float(re.search(r'id="top-p"[^>]*min="([\d.]+)"', page).group(1))
    assert top_p_min > 0
    for form in ({"top_p": str(top_p_min), "temperature": "1"}, {"top_p": "1", "temperature": "0"}):
        assert ask(client, **form).status_code == 200
    assert ask(client, temperature="2").status_code == 200
    assert [c["gen"].top_p for c in fake_engine.calls] == [top_p_min, 1.0, 1.0]


def test_other_sites_and_hosts_are_refused(client):
    r = client.post(
        "/api/chat",
        data={"messages": json.dumps([{"role": "user", "content": "Hi"}])},
        headers={"Origin": "http://evil.test"},
    )
    assert r.status_code == 403
    r = client.get("/api/info", headers={"Host": "attacker.test"})  # DNS rebinding
    assert r.status_code == 400


def test_one_generation_at_a_time(client, fake_engine):
    results = []

    def worker():
        results.append(ask(client, "slow answer").status_code)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert fake_engine.max_active == 1 and fake_engine.closed == 3


def test_cli_without_model_says_to_run_make_train(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVE_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main([])
    message = capsys.readouterr().err
    assert exc.value.code == 2 and message.count("\n") == 1 and "make train" in message and "--model" in message
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_cli_serves_the_model_on_loopback(tiny_export, monkeypatch, capsys):
    served = {}

    def serve(self, sockets=None):
        (sock,) = sockets
        served.update(app=self.config.app, host=self.config.host, address=sock.getsockname())
        with socket.create_connection(sock.getsockname(), timeout=5):  # the port is ours and listening
            pass

    monkeypatch.setattr(uvicorn.Server, "run", serve)
    port = free_port()
    main(["--model", str(tiny_export), "--port", str(port), "--device", "cpu"])
    assert served["host"] == "127.0.0.1" and served["address"] == ("127.0.0.1", port)
    assert f"tiny-eve on http://127.0.0.1:{port}" in capsys.readouterr().out
    with TestClient(served["app"], base_url="http://127.0.0.1") as c:
        assert c.get("/api/info").json()["model"] == "tiny-eve"
    main(["--model", str(tiny_export), "--host", "0.0.0.0", "--port", str(free_port())])
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().out


def test_cli_port_in_use_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(ChatEngine, "from_dir", lambda *a, **k: loads.append(a))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit) as exc:
            main(["--model", str(tmp_path), "--port", str(taken.getsockname()[1])])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.count("\n") == 1 and "already in use" in err and "--port" in err
    assert out == "" and loads == []  # no address printed, no model loaded


def test_fake_engine_matches_the_engine_contract(engine):
    assert isinstance(FakeEngine.model_name, str) and isinstance(engine.model_name, str)
    assert engine.image_size == FakeEngine.image_size == 672
