"""The web demo in a real headless browser: Debian's chromium driven by Playwright, serving the real engine.

Random weights give random text, so these tests check behaviour (upload, streaming, multi-turn, regenerate,
stop, clear, errors), not content. ``EVE_DEMO_SCREENSHOT=docs/demo.png`` also saves a screenshot of the page
after a short conversation (`test_screenshot`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from eve_lightning.webui.server import create_app
from tests.helpers.webui import LiveServer, RecordingEngine

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_NEW_TOKENS = 12
SCREENSHOT = os.environ.get("EVE_DEMO_SCREENSHOT")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="no browser at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos from scikit-image, as PNG files to upload."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("astronaut", "coffee"):  # 512 x 512, 600 x 400
        out[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(out[name])
    return out


@pytest.fixture(scope="module")
def recorder(engine) -> RecordingEngine:
    return RecordingEngine(engine)


@pytest.fixture(scope="module")
def server(recorder):
    with LiveServer(create_app(recorder)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, server, recorder, width: int):
    """The demo page in a fresh browser context `width` px wide; yields it and checks for script errors at the end."""
    context = browser.new_context(viewport={"width": width, "height": 720})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.requests, errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(server.url)
    expect(pg.locator("body")).to_have_attribute("data-ready", "true")
    set_slider(pg, "max-new-tokens", MAX_NEW_TOKENS)
    recorder.calls.clear()
    yield pg
    context.close()
    assert not errors, errors  # no script error, nothing blocked by the page's Content-Security-Policy


@pytest.fixture
def page(browser, server, recorder):
    yield from open_page(browser, server, recorder, 1180)


@pytest.fixture
def phone_page(browser, server, recorder):
    """The page on a 400 px wide screen (a phone held upright)."""
    yield from open_page(browser, server, recorder, 400)


def set_slider(page, slider: str, value: float) -> None:
    page.eval_on_selector(
        f"#{slider}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value)
    )


def ask(page, question: str) -> None:
    """Type and send a question, then wait for the answer to finish."""
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    expect(page.locator(".msg[data-state='streaming']")).to_have_count(0)
    expect(page.locator("body")).to_have_attribute("data-busy", "false")


def answers(page):
    return page.locator(".msg.assistant")


def test_upload_ask_and_the_answer_streams(page, server, recorder, photos):
    expect(page.locator("#model-name")).to_have_text("tiny-eve")
    expect(page.locator("#canvas-size")).to_have_text("672")
    page.set_input_files("#file-input", photos["astronaut"])
    expect(page.locator("#image-preview")).to_be_visible()
    expect(page.locator("#image-info")).to_contain_text("512 × 512 px, sent at native resolution")

    ask(page, "What is in the picture?")
    answer = answers(page)
    expect(answer).to_have_count(1)
    expect(answer).to_have_attribute("data-state", "done")
    assert answer.inner_text().strip()
    assert int(answer.get_attribute("data-chunks")) > 1  # streamed in several pieces, not all at once
    expect(page.locator("#stats")).to_contain_text(re.compile(r"time to first token [\d.]+ s · [\d.]+ tokens/s"))

    (call,) = recorder.calls
    assert call["image"] == (512, 512)  # the browser sent the photo as it is
    assert call["turns"] == [("user", "What is in the picture?")]
    assert call["gen"].max_new_tokens == MAX_NEW_TOKENS and call["gen"].temperature == 0.0
    local = (server.url + "/", f"blob:{server.url}/", "data:")
    assert all(url.startswith(local) for url in page.requests), page.requests  # nothing from the internet


def test_multi_turn_and_regenerate(page, recorder, photos):
    page.set_input_files("#file-input", photos["astronaut"])
    ask(page, "Describe the image.")
    first = answers(page).first.inner_text()
    ask(page, "What colour is the suit?")
    expect(answers(page)).to_have_count(2)
    assert recorder.calls[-1]["turns"] == [
        ("user", "Describe the image."),
        ("assistant", first),
        ("user", "What colour is the suit?"),
    ]
    assert recorder.calls[-1]["image"] == (512, 512)  # one image per conversation, sent with every turn

    set_slider(page, "temperature", 0.8)
    page.click("#regenerate")
    expect(answers(page).last).to_have_attribute("data-state", "done")
    expect(answers(page)).to_have_count(2)
    assert len(recorder.calls) == 3
    assert recorder.calls[-1]["turns"] == recorder.calls[-2]["turns"]
    assert recorder.calls[-1]["gen"].temperature == 0.8


def test_new_upload_starts_a_new_conversation(page, recorder, photos):
    page.set_input_files("#file-input", photos["astronaut"])
    ask(page, "What is in the picture?")
    expect(page.locator("#chat")).to_have_attribute("data-conversation", "1")

    page.set_input_files("#file-input", photos["coffee"])
    expect(page.locator("#chat .msg")).to_have_count(0)
    expect(page.locator("#chat")).to_have_attribute("data-conversation", "2")
    expect(page.locator("#image-info")).to_contain_text("600 × 400 px")
    ask(page, "And this one?")
    assert recorder.calls[-1]["image"] == (600, 400)
    assert recorder.calls[-1]["turns"] == [("user", "And this one?")]


def test_clear_removes_the_conversation_and_the_image(page, recorder, photos):
    page.set_input_files("#file-input", photos["astronaut"])
    ask(page, "What is in the picture?")
    page.click("#clear")
    expect(page.locator("#chat .msg")).to_have_count(0)
    expect(page.locator("#image-preview")).to_be_hidden()
    expect(page.locator("#stats")).to_have_text("No answer yet.")
    expect(page.locator("#regenerate")).to_be_disabled()
    ask(page, "Hello?")
    assert recorder.calls[-1]["image"] is None and recorder.calls[-1]["turns"] == [("user", "Hello?")]


def test_stop_keeps_the_partial_answer_and_frees_the_server(page, recorder):
    set_slider(page, "max-new-tokens", 1024)
    page.fill("#prompt", "Tell me a long story.")
    page.click("#send")
    answer = answers(page).last
    page.wait_for_function("() => Number(document.querySelector('.msg.assistant').dataset.chunks) >= 2")
    page.click("#send")  # the Send button is Stop while an answer streams
    expect(answer).to_have_attribute("data-state", "stopped")
    set_slider(page, "max-new-tokens", MAX_NEW_TOKENS)
    ask(page, "Shorter, please.")
    expect(answers(page).last).to_have_attribute("data-state", "done")
    assert recorder.calls[-1]["turns"][1][0] == "assistant"  # the partial answer stays in the conversation


def horizontal_overflow(page) -> dict:
    """Page width against screen width, and the elements that reach past the screen's right edge."""
    return page.evaluate(
        """() => {
          const root = document.documentElement, edge = root.clientWidth;
          const past = [...document.body.querySelectorAll("*")]
            .filter((el) => el.getBoundingClientRect().right > edge + 0.5)
            .map((el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : ""));
          return { scrollWidth: root.scrollWidth, clientWidth: edge, past };
        }"""
    )


def test_nothing_scrolls_sideways_on_a_400_px_screen(phone_page, photos):
    page = phone_page
    width = horizontal_overflow(page)
    assert width["clientWidth"] == 400
    assert width["scrollWidth"] <= width["clientWidth"] and not width["past"], width
    # with an image, a question of one long word and an answer, the page still fits the screen
    page.set_input_files("#file-input", photos["coffee"])
    expect(page.locator("#image-info")).to_contain_text("600 × 400 px")
    ask(page, "W" * 200)
    expect(answers(page)).to_have_count(1)
    width = horizontal_overflow(page)
    assert width["scrollWidth"] <= width["clientWidth"] and not width["past"], width
    for element in ("#prompt", "#send", "#regenerate", "#clear", "#top-p", "#image-preview"):
        box = page.locator(element).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400, (element, box)


def test_enter_while_an_answer_streams_keeps_the_typed_text(page, recorder):
    set_slider(page, "max-new-tokens", 1024)
    page.fill("#prompt", "Tell me a long story.")
    page.press("#prompt", "Enter")
    answer = answers(page).last
    page.wait_for_function("() => Number(document.querySelector('.msg.assistant').dataset.chunks) >= 2")
    page.fill("#prompt", "And then?")
    page.press("#prompt", "Enter")  # while the answer streams
    chunks = int(answer.get_attribute("data-chunks"))
    expect(page.locator("#prompt")).to_have_value("And then?")  # the text stays in the box
    expect(page.locator("#composer-note")).to_be_visible()  # saying why it was not sent
    # Enter did not stop the answer: it goes on streaming
    page.wait_for_function(
        "(n) => Number(document.querySelector('.msg.assistant').dataset.chunks) >= n + 2", arg=chunks
    )
    assert answer.get_attribute("data-state") != "stopped"
    expect(page.locator(".msg.user")).to_have_count(1)

    page.click("#send")  # Stop
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(page.locator("#composer-note")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("And then?")
    set_slider(page, "max-new-tokens", MAX_NEW_TOKENS)
    page.press("#prompt", "Enter")  # now it is sent
    expect(page.locator(".msg.user")).to_have_count(2)
    expect(answers(page).last).to_have_attribute("data-state", "done")
    expect(page.locator("#prompt")).to_have_value("")
    assert recorder.calls[-1]["turns"][-1] == ("user", "And then?")
    assert len(recorder.calls) == 2


def test_too_long_conversation_shows_the_engine_message(page):
    ask(page, "word " * 5000)
    error = page.locator(".msg.error")
    expect(error).to_contain_text("context")
    expect(page.locator(".msg.user.failed")).to_have_count(1)
    ask(page, "Short question.")  # the conversation goes on without the failed turn
    expect(answers(page).last).to_have_attribute("data-state", "done")


@pytest.mark.skipif(not SCREENSHOT, reason="screenshot only on request: EVE_DEMO_SCREENSHOT=docs/demo.png")
def test_screenshot(page, photos):
    """The page after a two-turn conversation, saved as a palette PNG (small enough to commit)."""
    set_slider(page, "max-new-tokens", 40)
    page.set_input_files("#file-input", photos["astronaut"])
    ask(page, "What is in the picture?")
    ask(page, "What is the person wearing?")
    expect(answers(page)).to_have_count(2)
    path = Path(SCREENSHOT)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    with Image.open(raw) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    raw.unlink()
