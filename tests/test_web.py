"""The browser pages in a real Chromium (Debian's), driven by Playwright, against a real server.

The capture page hears a shared recording through Chromium's fake microphone; overlays in
other tabs must show its words. Screenshots go to ``test-output/screenshots`` (or
``$FLASHCAPTION_TEST_OUTPUT/screenshots``) and are listed at the end of the test run.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from streaming.scoring import normalize
from tests.conftest import CLIPS, ServerThread
from tests.test_server import publish

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SPOKEN = CLIPS["en_ls_1995-1837-0001"]  # "It was the first great sorrow of his life ..."
SCREENSHOTS = Path(os.environ.get("FLASHCAPTION_TEST_OUTPUT", Path(__file__).parent.parent / "test-output")) / "screenshots"


def _write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run bin/test (it installs it) or apt-get install chromium")
    with sync_playwright() as playwright:
        yield playwright


def launch(playwright, *args: str):
    # A fresh temporary profile for each launch; Playwright's own browsers are never used.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(args), headless=True)


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    # The fake microphone plays the recording once (%noloop), with silence around it so the
    # utterance starts after the page is ready and ends on a pause.
    silence = np.zeros(16000, np.float32)
    fake = _write_wav(tmp_path_factory.mktemp("mic") / "speech.wav", np.concatenate([silence / 2, SPOKEN.audio, 2 * silence]))
    # --use-fake-ui-for-media-stream: the user says yes to the microphone.
    browser = launch(
        playwright,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake}%noloop",
    )
    yield browser
    browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    context.errors = errors
    yield context
    context.close()
    assert not errors, f"script errors in the pages: {errors}"


def screenshot(page, name: str, transparent: bool = False) -> Image.Image:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), omit_background=transparent)
    return Image.open(io.BytesIO(data)).convert("RGBA")


def run_async(coroutine):
    """asyncio.run on a thread of its own: a module using this module's browser fixture keeps an
    event loop running in the main thread, where asyncio.run refuses to start another."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def wait_for(page, expression: str, timeout: float = 60.0, arg=None):
    """Wait until a JavaScript expression (of ``n`` = arg) is true in the page."""
    function = f"(n) => ({expression})"  # a function, not a string to eval: the pages' CSP forbids eval
    page.wait_for_function(function, arg=arg, timeout=timeout * 1000)
    return page.evaluate(function, arg)


def overlay_geometry(page) -> dict:
    """Rectangles of the caption lines that show (within the clipping box), and the window."""
    return page.evaluate(
        """() => {
        const box = document.getElementById("viewport").getBoundingClientRect();
        const lines = [...document.querySelectorAll("#stack .line")].map((line) => ({
          text: line.textContent,
          final: line.classList.contains("final"),
          rects: [...line.querySelectorAll("span")].flatMap((s) => [...s.getClientRects()])
            .filter((r) => r.width > 0 && r.bottom > box.top + 1 && r.top < box.bottom - 1)
            .map((r) => ({ left: r.left, right: r.right, top: r.top, bottom: r.bottom })),
        })).filter((line) => line.rects.length);
        return { box: { left: box.left, right: box.right, top: box.top, bottom: box.bottom },
                 width: innerWidth, height: innerHeight, lines };
    }"""
    )


def check_layout(geometry: dict) -> None:
    """Shown text lies inside the window and inside the caption box; lines do not overlap."""
    assert geometry["lines"], "no caption is visible"
    box = geometry["box"]
    assert 0 <= box["left"] and box["right"] <= geometry["width"] and 0 <= box["top"] and box["bottom"] <= geometry["height"]
    bands = []
    for line in geometry["lines"]:
        for rect in line["rects"]:
            assert rect["left"] >= box["left"] - 1 and rect["right"] <= box["right"] + 1, (line["text"], rect, box)
            assert rect["top"] >= box["top"] - 2 and rect["bottom"] <= box["bottom"] + 2, (line["text"], rect, box)
        bands.append((min(r["top"] for r in line["rects"]), max(r["bottom"] for r in line["rects"])))
    for (_, bottom), (top, _) in zip(bands, bands[1:]):
        assert top >= bottom - 1, f"caption lines overlap: {bands}"


def own_server(model, data_dir, port: int = 0, **settings) -> ServerThread:
    """A server of the test's own (to restart on the same port and data, or with other settings)."""
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer

    return ServerThread(CaptionServer(ServerConfig(port=port, data_dir=data_dir, **settings), model)).start()


def words(text: str) -> set[str]:
    return set(normalize(text))


# -- the pages ------------------------------------------------------------------------------------
def test_start_page_links_a_room_and_names_the_model(server, context):
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/")
    wait_for(page, "document.getElementById('model').textContent !== '…'")
    assert page.inner_text("#model") == "moonshine-base-en"
    assert page.inner_text("#device") == "cpu"
    page.fill("#room", "town-hall")
    assert page.input_value("#overlay-url") == f"http://127.0.0.1:{server.port}/overlay?room=town-hall"
    assert page.input_value("#capture-url") == f"http://127.0.0.1:{server.port}/capture?room=town-hall"
    assert "bg=000000b0" in page.input_value("#boxed-url")
    screenshot(page, "start-page")


def test_speaking_on_the_capture_page_captions_the_overlay(server, context):
    """The whole path a user takes: microphone in one tab, overlay in another."""
    overlay = context.new_page()
    overlay.goto(f"http://127.0.0.1:{server.port}/overlay?room=browser-mic")
    wait_for(overlay, "window.flashcaption.state === 'live'", 10)
    capture = context.new_page()
    capture.goto(f"http://127.0.0.1:{server.port}/capture?room=browser-mic&speaker=Ada")
    capture.click("#start")
    wait_for(capture, "document.body.dataset.state === 'live'", 20)
    # The level meter moves while the recording plays.
    wait_for(capture, "Number(document.getElementById('meter').getAttribute('aria-valuenow')) > 5", 20)
    # Every word of the recording reaches the overlay as finals.
    reference = words(SPOKEN.reference)
    # (All finals drawn, also those scrolled out of the overlay's two lines.)
    shown = lambda: words(" ".join(overlay.eval_on_selector_all("#stack .final", "ls => ls.map(l => l.textContent)")))  # noqa: E731
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(reference & shown()) < 0.9 * len(reference):
        time.sleep(0.5)
    assert len(reference & shown()) >= 0.9 * len(reference), overlay.inner_text("#stack")
    check_layout(overlay_geometry(overlay))
    # The speaker sees the same captions; the screen reader region has the finals.
    assert "sorrow" in capture.inner_text("#captions").lower()
    assert "sorrow" in overlay.inner_text("#spoken").lower()
    assert overlay.get_attribute("#spoken", "aria-live") == "polite"
    image = screenshot(overlay, "overlay-from-browser-microphone", transparent=True)
    assert image.getpixel((5, 5))[3] == 0, "the overlay's background must be transparent"
    screenshot(capture, "capture-page")
    capture.click("#stop")
    wait_for(capture, "document.getElementById('start').disabled === false", 30)
    assert "Stopped" in capture.inner_text("#state")


def test_capture_page_explains_a_denied_microphone(server, playwright):
    # Without --use-fake-ui-for-media-stream nobody grants the permission: the browser denies it.
    browser = launch(playwright, "--use-fake-device-for-media-stream")
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/capture?room=denied")
        page.click("#start")
        wait_for(page, "document.getElementById('state').dataset.kind === 'error'", 10)
        assert "Microphone access was denied" in page.inner_text("#state")
        assert not page.is_disabled("#start"), "Start must be pressable again"
    finally:
        browser.close()


def test_capture_page_explains_a_rejected_token(model, tmp_path, context):
    guarded = own_server(model, tmp_path, auth="on")
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{guarded.port}/capture?room=locked&token=not-a-token")
        page.click("#start")
        wait_for(page, "document.getElementById('state').dataset.kind === 'error' && /token/.test(document.getElementById('state').textContent)", 20)
        assert "refused the token" in page.inner_text("#state")
        overlay = context.new_page()
        messages: list[str] = []
        overlay.on("console", lambda message: messages.append(message.text))
        overlay.goto(f"http://127.0.0.1:{guarded.port}/overlay?room=locked")
        wait_for(overlay, "window.flashcaption.state === 'refused'", 20)
        assert any("refused" in m for m in messages)
        assert overlay.inner_text("#stack") == "", "an overlay shows captions only, never an error"
    finally:
        guarded.stop()


# -- styles, checked on screenshots --------------------------------------------------------------
LONG = CLIPS["en_jfk_inaugural"]
STYLES = {
    "transparent": "",
    "boxed": "&bg=000000b0&outline=none&lines=3",
    "long-lines": "&size=64&max_width=55&lines=3&position=top",
    "right-to-left": "&dir=rtl&lines=2",
}


def test_overlay_styles_with_two_speakers(server, context):
    room = "styles"
    pages = {}
    for name, query in STYLES.items():
        pages[name] = context.new_page()
        pages[name].goto(f"http://127.0.0.1:{server.port}/overlay?room={room}{query}")
        wait_for(pages[name], "window.flashcaption.state === 'live'", 10)
    publish(server.url, SPOKEN.audio, f"room={room}&speaker=Ada")
    publish(server.url, LONG.audio, f"room={room}&speaker=Ben")
    for name, page in pages.items():
        wait_for(page, "document.querySelectorAll('#stack .line.final').length >= 2 && !document.querySelector('#stack .partial')", 30)
        page.wait_for_timeout(400)  # let the scroll animation finish
        geometry = overlay_geometry(page)
        check_layout(geometry)
        # Two publishers in the room: the newest lines carry their speakers' names.
        assert geometry["lines"][-1]["text"].startswith("Ben: "), geometry["lines"]
        assert "country" in geometry["lines"][-1]["text"].lower()
        image = screenshot(page, f"overlay-{name}", transparent=True)
        box = [round(v) for v in (geometry["box"]["left"], geometry["box"]["top"], geometry["box"]["right"], geometry["box"]["bottom"])]
        corner = image.getpixel((2, 2 if name != "long-lines" else image.height - 3))
        assert corner[3] == 0, f"{name}: the page around the captions must be transparent"
        pixels = np.asarray(image.crop(box))
        opaque = pixels[..., 3] > 200
        assert opaque.mean() > 0.05, f"{name}: no text drawn in the caption box"
        if name == "boxed":
            # Behind the newest line is the dark, mostly opaque box (b0 = 69%), not the video.
            rect = geometry["lines"][-1]["rects"][0]
            behind = np.asarray(image.crop([round(rect["left"]) + 2, round(rect["top"]) + 2, round(rect["right"]) - 2, round(rect["bottom"]) - 2]))
            covered = behind[..., 3] >= 150
            assert covered.mean() > 0.95 and np.median(behind[..., :3][behind[..., 3] < 250]) < 60, f"boxed: {covered.mean():.2f} covered"
    top = overlay_geometry(pages["long-lines"])["box"]["top"]
    assert top < 720 / 2, "position=top puts the captions at the top"
    # Long lines wrap inside max_width (55% of the window).
    long_lines = overlay_geometry(pages["long-lines"])
    assert long_lines["box"]["right"] - long_lines["box"]["left"] <= 0.56 * 1280
    assert len({round(r["top"]) for line in long_lines["lines"] for r in line["rects"]}) >= 2


def test_overlay_hides_in_silence_and_returns_with_speech(server, context):
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/overlay?room=fading&hide_after=1")
    wait_for(page, "window.flashcaption.state === 'live'", 10)
    publish(server.url, CLIPS["en_arctic_a0024"].audio, "room=fading")
    wait_for(page, "document.querySelector('#stack .final') !== null", 30)
    wait_for(page, "document.body.classList.contains('idle')", 5)
    publish(server.url, CLIPS["en_librivox_sns01_0880"].audio, "room=fading")
    wait_for(page, "!document.body.classList.contains('idle')", 30)


# -- the transcript page ---------------------------------------------------------------------------
def test_transcript_page_lists_and_searches_the_room(server, context):
    room = "minutes"
    publish(server.url, CLIPS["en_arctic_a0024"].audio, f"room={room}&speaker=Ada")
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/transcript?room={room}")
    wait_for(page, "document.querySelectorAll('#entries li[data-seq]').length >= 1", 20)
    publish(server.url, CLIPS["en_librivox_sns01_0880"].audio, f"room={room}&speaker=Ben")  # live, while open
    wait_for(page, "[...document.querySelectorAll('#entries li[data-seq]')].some((li) => li.textContent.includes('Ben'))", 30)
    entries = page.eval_on_selector_all("#entries li[data-seq]", "items => items.map(li => li.textContent)")
    journal = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/rooms/{room}/transcript").read())["finals"]
    assert len(entries) == len(journal)
    assert all(f["text"] in entry for f, entry in zip(journal, entries))
    assert all(page.eval_on_selector_all("#entries time", "ts => ts.map(t => /^\\d\\d:\\d\\d:\\d\\d$/.test(t.textContent))"))
    page.fill("#search", "reports")
    visible = page.eval_on_selector_all("#entries li:not([hidden])", "items => items.map(li => li.textContent)")
    assert visible and all("reports" in v.lower() for v in visible)
    assert page.inner_text("#entries mark").lower() == "reports"
    assert page.get_attribute("#srt", "href").endswith(f"/v1/rooms/{room}/transcript?format=srt")
    screenshot(page, "transcript-page")


# -- resuming after a server restart -------------------------------------------------------------
def test_overlay_resumes_after_a_restart_without_losing_or_repeating_a_final(model, tmp_path, context):
    first = own_server(model, tmp_path)
    port = first.port
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/overlay?room=restart&lines=3")
    wait_for(page, "window.flashcaption.state === 'live'", 10)
    publish(first.url, SPOKEN.audio, "room=restart")
    wait_for(page, "window.flashcaption.finals.length >= 1", 30)
    first.stop()
    wait_for(page, "window.flashcaption.state === 'waiting'", 10)
    # The restarted server takes new captions at once, usually before the overlay's next try:
    # those it fetches from the journal (since=its last seq), the rest come live; either way
    # each final once, in order.
    second = own_server(model, tmp_path, port=port)
    try:
        publish(second.url, LONG.audio, "room=restart")
        journal = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/rooms/restart/transcript").read())["finals"]
        expected = [final["seq"] for final in journal]
        assert len(expected) >= 2
        wait_for(page, "window.flashcaption.finals.length >= n", 40, arg=len(expected))
        page.wait_for_timeout(1000)  # anything repeated would arrive now
        assert page.evaluate("window.flashcaption.finals") == expected
        shown = page.eval_on_selector_all("#stack .line.final", "lines => lines.map(l => Number(l.dataset.seq))")
        assert shown == sorted(set(shown)), "a final is drawn twice"
        assert "country" in page.inner_text("#stack").lower()
    finally:
        second.stop()


def test_capture_page_says_the_connection_was_lost_and_resumes(model, tmp_path, context):
    first = own_server(model, tmp_path)
    port = first.port
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/capture?room=flaky&speaker=Ada")
    page.click("#start")
    wait_for(page, "document.body.dataset.state === 'live'", 20)
    first.stop()
    wait_for(page, "/connection was lost/.test(document.getElementById('state').textContent)", 10)
    assert "your speech is kept" in page.inner_text("#state")
    second = own_server(model, tmp_path, port=port)
    try:
        # Back on its own (resuming its session if the server can, else a new one) with the
        # speech recorded meanwhile, and captions flow again.
        wait_for(page, "document.body.dataset.state === 'live'", 30)
        wait_for(page, "document.querySelector('#stack .final') !== null", 60)
        journal = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/rooms/flaky/transcript").read())["finals"]
        assert journal and {f["speaker"] for f in journal} == {"Ada"}
    finally:
        page.click("#stop")
        second.stop()
