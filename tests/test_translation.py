"""Live translation: each final of a session that asks for it (translate=en, or the room's
setting) is decoded again with the translate task, after its final and never before the next
one; viewers get a translation event after each final, live and from the journal. Logic with the
scripted model (which "translates" into capitals); real Whisper on real Spanish, Portuguese and
Chinese speech."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from streaming.config import ServerConfig
from streaming.room_settings import RoomSettings
from streaming.server import CaptionServer
from tests.conftest import CLIPS, ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_server import finals, publish, receive_until
from tests.test_web import browser, context, playwright  # noqa: F401  (fixtures)


def watch_until(viewer, count: int, timeout: float = 30) -> list[dict]:
    """Messages until ``count`` translations have come."""
    got: list[dict] = []
    receive = lambda m: got.append(m) or sum(x["type"] == "translation" for x in got) >= count  # noqa: E731
    receive_until(viewer, receive, timeout)
    return got


def test_each_final_is_followed_by_its_translation_live_and_from_the_journal(tmp_path):
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel(translates=True))).start()
    try:
        with connect(f"{running.url}/v1/captions?room=hall") as viewer:
            json.loads(viewer.recv(timeout=10))
            messages, code = publish(running.url, speak("alpha bravo", "charlie", "delta echo"), "room=hall&translate=en")
            got = watch_until(viewer, 3)
        own = [m for m in messages if m["type"] == "translation"]  # the publisher gets them too
        events = [(m["type"], m["seq"]) for m in got if m["type"] in ("final", "translation")]
        # Each translation after its final (the next final may come before it: it does not wait).
        assert code == 1000 and all(events.index(("final", s)) < events.index(("translation", s)) for s in (1, 2, 3))
        assert [m["text"] for m in got if m["type"] == "translation"] == ["ALPHA BRAVO", "CHARLIE", "DELTA ECHO"]
        assert all(m["language"] == "en" and m["room"] == "hall" for m in got if m["type"] == "translation")
        assert sorted(m["seq"] for m in own) == [1, 2, 3]
        with connect(f"{running.url}/v1/captions?room=hall&since=0") as late:
            json.loads(late.recv(timeout=10))
            replayed = [json.loads(late.recv(timeout=10)) for _ in range(6)]
        assert [(m["type"], m["seq"]) for m in replayed] == [("final", 1), ("translation", 1), ("final", 2), ("translation", 2),
                                                              ("final", 3), ("translation", 3)]
        # Without translate=, no translation.
        messages, _ = publish(running.url, speak("foxtrot"), "room=hall")
        assert not [m for m in messages if m["type"] == "translation"] and [f["text"] for f in finals(messages)] == ["foxtrot"]
    finally:
        running.stop()


def test_a_model_that_cannot_translate_refuses_clearly(tmp_path):
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        with connect(f"{running.url}/v1/publish?room=hall&translate=en") as ws:
            refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error" and refused["code"] == "bad_request" and "cannot translate" in refused["message"]
        with connect(f"{running.url}/v1/publish?room=hall&translate=fr") as ws:
            assert "cannot translate" in json.loads(ws.recv(timeout=10))["message"]
    finally:
        running.stop()
    with pytest.raises(ValueError, match="nothing here translates into en"):
        RoomSettings("moonshine-base-en", ("en",), room_translations={"stage": "en"})
    whisper = RoomSettings("whisper-base", ("en", "de"), room_translations={"*": "en"}, translation_targets=("en",))
    assert whisper.translation("any", None) == "en"
    with pytest.raises(Exception, match="translated into en here, not fr"):
        whisper.translation("any", "fr")


ENGLISH_WORDS = {"the", "a", "an", "is", "are", "was", "of", "to", "in", "and", "it", "this", "that", "you", "i", "we", "he", "they", "be"}


@pytest.mark.slow
@pytest.mark.parametrize("clip_id", ["de_fleurs_test_001", "es_fleurs_test_000", "fr_fleurs_test_000", "ja_fleurs_test_000",
                                     "zh_fleurs_test_000", "pt_fleurs_test_000"])
def test_whisper_translates_live_speech_into_english(whisper_server, clip_id):
    """The shared recordings' languages: a translation for every final, each after its final, in English."""
    from streaming.scoring import normalize

    room = f"translate-{clip_id}"
    with connect(f"{whisper_server.url}/v1/captions?room={room}") as viewer:
        json.loads(viewer.recv(timeout=10))
        messages, code = publish(whisper_server.url, CLIPS[clip_id].audio, f"room={room}&translate=en")
        count = len(finals(messages))
        got = watch_until(viewer, count, timeout=120)
    events = [(m["type"], m["seq"]) for m in got if m["type"] in ("final", "translation")]
    translations = [m for m in got if m["type"] == "translation"]
    print(clip_id, [t["text"] for t in translations])
    assert code == 1000 and count >= 1 and sorted(t["seq"] for t in translations) == sorted(f["seq"] for f in finals(messages))
    assert all(events.index(("final", t["seq"])) < events.index(("translation", t["seq"])) for t in translations)
    for translation in translations:
        text = translation["text"]
        # English, not the spoken language: Whisper base may leave a word untranslated ("This is not a告别").
        assert text and sum(c.isascii() for c in text) >= 0.8 * len(text), text
        assert ENGLISH_WORDS & set(normalize(text)), text


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory):
    from decoder.models import load_model
    from decoder.runtime import RuntimeOptions

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("whisper")), load_model("whisper-base", RuntimeOptions())))
    yield running.start()
    running.stop()


def test_exports_per_language_parse_and_are_timed_as_the_original(tmp_path):
    import io
    import urllib.request

    import srt
    import webvtt

    from streaming.client import CaptionPrinter

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel(translates=True))).start()
    try:
        messages, _ = publish(running.url, speak("alpha bravo", "charlie"), "room=hall&translate=en")
        base = running.url.replace("ws://", "http://") + "/v1/rooms/hall/transcript"

        def get(query: str) -> str:
            return urllib.request.urlopen(f"{base}?{query}", timeout=10).read().decode()

        original, english = list(srt.parse(get("format=srt"))), list(srt.parse(get("format=srt&lang=en")))
        assert [c.content for c in original] == ["alpha bravo", "charlie"] and [c.content for c in english] == ["ALPHA BRAVO", "CHARLIE"]
        assert [(c.start, c.end) for c in original] == [(c.start, c.end) for c in english]
        assert [c.text for c in webvtt.from_buffer(io.StringIO(get("format=vtt&lang=en")))] == ["ALPHA BRAVO", "CHARLIE"]
        rows = json.loads(get("format=json"))["finals"]
        assert [r["translations"] for r in rows] == [{"en": "ALPHA BRAVO"}, {"en": "CHARLIE"}]
        with pytest.raises(urllib.error.HTTPError):
            get("format=srt&lang=fr")
    finally:
        running.stop()
    out = io.StringIO()
    printer = CaptionPrinter(out, lang="both")
    for message in messages:
        printer(message)
    assert out.getvalue().splitlines() == ["alpha bravo", "  → ALPHA BRAVO", "charlie", "  → CHARLIE"]


@pytest.mark.slow
def test_the_overlay_shows_both_lines_and_the_transcript_both_columns(whisper_server, context):  # noqa: F811
    from tests.test_web import screenshot, wait_for

    room = "translated-overlay"
    base = f"http://127.0.0.1:{whisper_server.port}"
    overlay, english, transcript = context.new_page(), context.new_page(), context.new_page()
    overlay.goto(f"{base}/overlay?room={room}&lang=both&lines=4&page_bg=1d2330&tcolor=ffd34d")
    english.goto(f"{base}/overlay?room={room}&lang=en&lines=4")
    transcript.goto(f"{base}/transcript?room={room}")
    for page in (overlay, english):
        wait_for(page, "window.flashcaption.state === 'live'", 10)
    publish(whisper_server.url, CLIPS["es_fleurs_test_000"].audio, f"room={room}&translate=en")
    for page in (overlay, english):
        wait_for(page, "window.flashcaption.translations.length >= 1", 60)
    both = overlay.inner_text("#stack")
    assert "viajeros" in both and "travel" in both.lower()  # the original above, its translation under it
    color = overlay.eval_on_selector(".line .translation", "e => getComputedStyle(e).color")
    assert color == "rgb(255, 211, 77)"
    assert "viajeros" not in english.inner_text("#stack") and "travel" in english.inner_text("#stack").lower()
    wait_for(transcript, "document.querySelector('#entries .translation') !== null", 30)
    assert transcript.evaluate("document.body.classList.contains('translated')")
    screenshot(overlay, "overlay-translation-both")


def test_a_text_translator_serves_the_targets_the_speech_model_cannot():
    import asyncio
    import concurrent.futures

    from streaming.events import Final
    from streaming.translation import SpeechTranslator, TextTranslation, translators

    class Reverser:  # a stand-in machine-translation model (pure logic: the interface, not a model)
        targets = ("fr", "en")

        def translate(self, text: str, source: str, target: str) -> str:
            return f"{target}:{text[::-1]}"

    speaking = ScriptedModel(translates=True)
    chosen = translators(engine=None, model=speaking, text=[Reverser()])  # type: ignore[arg-type]
    assert isinstance(chosen["fr"], TextTranslation) and isinstance(chosen["en"], SpeechTranslator)  # the speech model first for en
    assert set(translators(engine=None, model=ScriptedModel())) == set()  # type: ignore[arg-type]
    final = Final("r", "s", "", 0, "bonjour", 0.0, 1.0, "fr", seq=1)
    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # a loop of its own (the browser's may run in this one)
        assert thread.submit(asyncio.run, chosen["fr"].translate(final, None, "fr")).result() == "fr:ruojnob"  # type: ignore[arg-type]


def test_past_its_bound_a_session_s_oldest_waiting_translation_is_given_up(tmp_path):
    """At most max_pending_translations finals wait; past it the oldest is skipped (counted), the
    newest is still translated, and every final is sent."""
    import time

    class SlowTranslation(ScriptedModel):  # translating takes longer than the speaker takes to say the next sentence
        def decode(self, features, prefix=(), draft=(), options=None):  # type: ignore[override]
            if options is not None and options.task == "translate":
                time.sleep(0.5)
            return super().decode(features, prefix, draft, options) if options is not None else super().decode(features, prefix, draft)

    config = ServerConfig(port=0, data_dir=tmp_path, max_pending_translations=1)
    running = ServerThread(CaptionServer(config, SlowTranslation(translates=True))).start()
    try:
        texts = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
        messages, code = publish(running.url, speak(*texts), "room=hall&translate=en")
        translated = [m["seq"] for m in messages if m["type"] == "translation"]
        skipped = running.server.metrics.translations_skipped
    finally:
        running.stop()
    assert code == 1000 and [f["text"] for f in finals(messages)] == texts  # finals never wait for translations
    assert skipped >= 1 and len(translated) == len(texts) - skipped and translated[-1] == len(texts)  # the newest kept
