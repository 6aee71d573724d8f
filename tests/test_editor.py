"""The caption editor in a real Chromium: a captioner corrects finals with the keyboard alone
while a publisher streams a real recording; two overlays and a transcript page show the
corrected lines, an overlay that was offline meanwhile shows them once it is back, and an editor
page opened with a view token is refused."""

from __future__ import annotations

import json
import logging
import threading
import uuid

from streaming import auth
from tests.conftest import CLIPS
from tests.scripted import speak
from tests.test_auth import guarded  # noqa: F401  (the fixture: a server that needs tokens)
from tests.test_server import publish
from tests.test_web import browser, context, playwright, screenshot, wait_for  # noqa: F401  (fixtures)

JFK = CLIPS["en_jfk_inaugural"]  # four finals: "And so my fellow Americans." ... "Ask what you can do for your country."


def line_text(page, seq: int) -> str:
    return page.evaluate("seq => document.querySelector(`.line.final[data-seq='${seq}'] .settled`)?.textContent ?? null", seq)


def test_an_editor_corrects_finals_by_keyboard_and_every_page_shows_them(server, context):  # noqa: F811
    room = f"edit-{uuid.uuid4().hex[:6]}"
    base = f"http://127.0.0.1:{server.port}"
    overlays = [context.new_page() for _ in range(2)]
    for overlay in overlays:
        overlay.goto(f"{base}/overlay?room={room}&lines=6&page_bg=1d2330")
    transcript = context.new_page()
    transcript.goto(f"{base}/transcript?room={room}")
    # An overlay whose network drops while a correction is made, and comes back after it.
    offline = threading.Event()
    routes = []

    def route(socket) -> None:
        if offline.is_set():
            socket.close()  # the network is down: the overlay keeps retrying
            return
        socket.connect_to_server()
        routes.append(socket)

    dropping = context.new_page()
    dropping.route_web_socket(lambda url: "/v1/captions" in url, route)
    dropping.goto(f"{base}/overlay?room={room}&lines=6")
    editor = context.new_page()
    editor.goto(f"{base}/editor?room={room}&editor=Ed")
    for page in [*overlays, dropping, editor]:
        wait_for(page, "window.flashcaption.state === 'live'", 10)

    speaking = threading.Thread(target=publish, args=(server.url, JFK.audio, f"room={room}&speaker=JFK", 0.1))  # real time
    speaking.start()
    try:
        wait_for(editor, "window.flashcaption.finals.length >= 2", 60)
        wait_for(overlays[0], "window.flashcaption.finals.includes(1)", 10)
        screenshot(overlays[0], "overlay-before-correction")
        before = line_text(overlays[0], 1)
        # Keyboard only: to the first final, edit, replace the text, save.
        editor.keyboard.press("Home")
        editor.keyboard.press("Enter")
        editor.keyboard.type("And so, my fellow Americans:")
        editor.keyboard.press("Enter")
        wait_for(editor, "window.flashcaption.corrections.some(([seq]) => seq === 1)", 10)
        for page in overlays:
            wait_for(page, "window.flashcaption.corrections.some(([seq]) => seq === 1)", 10)
            assert line_text(page, 1) == "And so, my fellow Americans:"
        wait_for(transcript, "document.querySelector('#entries li[data-seq=\"1\"] .text')?.textContent === 'And so, my fellow Americans:'", 10)
        assert transcript.get_attribute('#entries li[data-seq="1"]', "title").startswith("Corrected by Ed")
        screenshot(overlays[0], "overlay-after-correction")
        assert before != line_text(overlays[0], 1)

        # The dropping overlay goes offline; the next final is corrected meanwhile (Tab: save and
        # go on to the next; Escape there: nothing sent); then it comes back.
        wait_for(editor, "window.flashcaption.finals.length >= 3", 60)
        wait_for(dropping, "window.flashcaption.finals.includes(2)", 10)
        offline.set()
        routes[-1].close()
        wait_for(dropping, "window.flashcaption.state === 'waiting'", 10)
        editor.keyboard.press("ArrowDown")
        editor.keyboard.press("Enter")
        editor.keyboard.type("Ask not")
        editor.keyboard.press("Tab")
        assert editor.evaluate("document.activeElement.getAttribute('aria-label')") == "Text of final 3"
        editor.keyboard.press("Escape")
        wait_for(editor, "window.flashcaption.corrections.some(([seq]) => seq === 2)", 10)
        # Speaker, from the keyboard too.
        editor.keyboard.press("s")
        editor.keyboard.type("John F. Kennedy")
        editor.keyboard.press("Enter")
        wait_for(editor, "window.flashcaption.corrections.some(([seq]) => seq === 3)", 10)
        offline.clear()
        wait_for(dropping, "window.flashcaption.corrections.some(([seq]) => seq === 2)", 15)
        assert line_text(dropping, 2) == "Ask not"
    finally:
        speaking.join(60)
    screenshot(editor, "editor-page")
    # Nothing was sent for the edit cancelled with Escape, and each correction was made once.
    corrections = editor.evaluate("window.flashcaption.corrections")
    assert sorted(corrections) == [[1, 1], [2, 1], [3, 1]] and editor.evaluate("window.flashcaption.refused") == []
    history = json.loads(
        __import__("urllib.request").request.urlopen(f"{base}/v1/rooms/{room}/transcript?format=json&revisions=1", timeout=10).read()
    )["finals"]
    assert [(f["seq"], f["revision"], f["speaker"]) for f in history[:3]] == [(1, 1, "JFK"), (2, 1, "JFK"), (3, 1, "John F. Kennedy")]
    assert all(r["editor"] == "Ed" for f in history for r in f["revisions"])


def test_an_editor_page_with_a_view_token_is_refused(guarded, context, caplog):  # noqa: F811
    room = f"locked-{uuid.uuid4().hex[:6]}"
    publish(guarded.url, speak("alpha bravo"), f"room={room}&token={auth.create_token(guarded.secret, room, 'publish', 60)}")
    editor = context.new_page()
    editor.goto(f"http://127.0.0.1:{guarded.port}/editor?room={room}&token={auth.create_token(guarded.secret, room, 'view', 60)}")
    wait_for(editor, "window.flashcaption.finals.length === 1", 10)
    with caplog.at_level(logging.WARNING):
        editor.keyboard.press("Enter")
        editor.keyboard.type("hijacked")
        editor.keyboard.press("Enter")
        wait_for(editor, "window.flashcaption.refused.length === 1", 10)
    refused = editor.evaluate("window.flashcaption.refused[0]")
    assert refused["code"] == "unauthorized" and "cannot edit" in refused["message"]
    assert "Not corrected" in editor.inner_text("#status")
    assert any("refused to edit" in r.getMessage() for r in caplog.records)


def test_a_term_corrected_twice_is_suggested_and_added_in_one_action(guarded, context):  # noqa: F811
    room = f"terms-{uuid.uuid4().hex[:6]}"
    publish(guarded.url, speak("alpha bravo", "charlie"), f"room={room}&token={auth.create_token(guarded.secret, room, 'publish', 60)}")
    editor = context.new_page()
    editor.goto(f"http://127.0.0.1:{guarded.port}/editor?room={room}&editor=Ed&token={auth.create_token(guarded.secret, room, 'edit', 60)}")
    wait_for(editor, "window.flashcaption.finals.length === 2", 10)
    editor.keyboard.press("Enter")  # edit the first; Tab saves it and edits the next
    editor.keyboard.type("Hester Prynne bravo")  # the same name, corrected in twice
    editor.keyboard.press("Tab")
    editor.keyboard.type("Hester Prynne.")
    editor.keyboard.press("Enter")
    wait_for(editor, "window.flashcaption.suggested.includes('Hester Prynne')", 10)
    editor.click("#suggestions button")  # one action
    wait_for(editor, "window.flashcaption.terms.includes('Hester Prynne')", 10)
    assert editor.evaluate("window.flashcaption.suggested") == []
    editor.keyboard.press("t")  # or typed in
    editor.keyboard.type("Chillingworth")
    editor.keyboard.press("Enter")
    wait_for(editor, "window.flashcaption.terms.length === 2", 10)
    assert [t.text for t in guarded.server.settings.context(room).terms] == ["Hester Prynne", "Chillingworth"]
    assert "Hester Prynne" in editor.inner_text("#term-list")
