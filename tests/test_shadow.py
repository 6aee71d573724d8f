"""Live shadow (serve --shadow): a second model decodes each final's audio in a process of its own
at the lowest priority, skipped first under load; its text is journaled beside the final, sent to
viewers that ask (shadow=1: the /compare page), exported, and counted in /metrics. Logic and a
server with scripted models (the shadow a scripted model that leaves out each utterance's first
word, so the two differ); Moonshine with a Whisper shadow on a real recording, in Chromium."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from streaming.config import ServerConfig
from streaming.export import render, shadowed
from streaming.server import CaptionServer
from streaming.shadow import ShadowModel, ShadowQueue
from tests.conftest import CLIPS, ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_server import finals, publish, receive_until
from tests.test_web import browser, context, playwright, run_async, screenshot, wait_for  # noqa: F401  (fixtures)


def test_the_queue_gives_up_the_oldest_past_its_bound_and_everything_under_load():
    queue: ShadowQueue[int] = ShadowQueue(max_pending=3)
    for item in range(5):
        queue.offer(item, overloaded=False)
    assert len(queue) == 3 and queue.skipped == {"backlog": 2}
    assert queue.take(overloaded=False) == 2  # the oldest kept
    queue.offer(9, overloaded=True)  # made while the primary is overloaded: not decoded
    assert queue.skipped["load"] == 1 and len(queue) == 2
    assert queue.take(overloaded=True) is None and len(queue) == 0 and queue.skipped["load"] == 3
    assert queue.take(overloaded=False) is None


def test_exports_carry_the_shadow_beside_each_final_or_in_its_place():
    rows = [{"room": "r", "seq": s, "session": "s", "speaker": "", "segment": s, "text": t, "language": "en", "start": s, "end": s + 1,
             "wall_start": 100.0 + s, "wall_end": 101.0 + s, "written": 0, "revision": 0} for s, t in ((1, "alpha bravo"), (2, "charlie"))]
    shadows = [{"seq": 1, "model": "whisper-base", "language": "en", "text": "alpha brave"}]
    beside = shadowed(rows, shadows)
    assert beside[0]["shadows"] == {"whisper-base": "alpha brave"} and "shadows" not in beside[1]
    instead = shadowed(rows, shadows, "whisper-base")
    assert [r["text"] for r in instead] == ["alpha brave"]  # a final with no shadow text is left out
    assert "alpha brave" in render(instead, "srt") and "charlie" not in render(instead, "txt")


def shadow_server(tmp_path, **config) -> ServerThread:
    """Scripted primary; shadow: a scripted model (in its own process) that leaves out the first word."""
    shadow = ShadowModel(functools.partial(ScriptedModel, name="scripted-shadow", skips_first=1))
    return ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, room_shadows={"*": "scripted-shadow", "lobby": "none"}, **config),
                                      ScriptedModel(), {"scripted-shadow": shadow})).start()


def shadows_until(viewer, count: int, timeout: float = 30) -> list[dict]:
    got: list[dict] = []
    receive_until(viewer, lambda m: got.append(m) or sum(x["type"] == "shadow" for x in got) >= count, timeout)
    return got


def test_a_shadow_decodes_every_final_beside_it_live_from_the_journal_and_in_exports(tmp_path):
    running = shadow_server(tmp_path)
    try:
        assert running.server.shadow_models["scripted-shadow"].name == "scripted-shadow"
        with connect(f"{running.url}/v1/captions?room=hall&shadow=1") as watcher, connect(f"{running.url}/v1/captions?room=hall") as audience:
            json.loads(watcher.recv(timeout=10))
            json.loads(audience.recv(timeout=10))
            messages, code = publish(running.url, speak("alpha bravo", "charlie delta echo"), "room=hall")
            got = shadows_until(watcher, 2)
            seen = [json.loads(audience.recv(timeout=10)) for _ in range(len(finals(messages)))]
        assert code == 1000 and [f["text"] for f in finals(messages)] == ["alpha bravo", "charlie delta echo"]
        events = [(m["type"], m["seq"]) for m in got if m["type"] in ("final", "shadow")]
        assert all(events.index(("final", s)) < events.index(("shadow", s)) for s in (1, 2))  # each after its final
        shadows = [m for m in got if m["type"] == "shadow"]
        assert [(m["seq"], m["model"], m["text"]) for m in shadows] == [(1, "scripted-shadow", "bravo"), (2, "scripted-shadow", "delta echo")]
        # Neither the publisher nor a viewer that did not ask is sent the shadow's text.
        assert all(m["type"] != "shadow" for m in messages + seen)
        with connect(f"{running.url}/v1/captions?room=hall&since=0&shadow=1") as late:
            json.loads(late.recv(timeout=10))
            replayed = [json.loads(late.recv(timeout=10)) for _ in range(4)]
        assert [(m["type"], m["seq"]) for m in replayed] == [("final", 1), ("shadow", 1), ("final", 2), ("shadow", 2)]
        base = running.url.replace("ws://", "http://")
        with urllib.request.urlopen(f"{base}/v1/rooms/hall/transcript?format=json") as reply:
            document = json.load(reply)
        assert [f.get("shadows") for f in document["finals"]] == [{"scripted-shadow": "bravo"}, {"scripted-shadow": "delta echo"}]
        with urllib.request.urlopen(f"{base}/v1/rooms/hall/transcript?format=txt&shadow=scripted-shadow") as reply:
            lines = reply.read().decode().splitlines()
        assert [line.split("] ", 1)[1] for line in lines] == ["bravo", "delta echo"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/v1/rooms/hall/transcript?format=txt&shadow=nobody")
        assert refused.value.code == 400 and b"scripted-shadow" in refused.value.read()
        refused.value.close()
        with urllib.request.urlopen(f"{base}/metrics") as reply:
            metrics = reply.read().decode()
        # 5 words of the primary's, 2 left out by the shadow.
        assert 'flashcaption_shadow_finals_total{language="en",model="scripted-shadow"} 2' in metrics
        assert 'flashcaption_shadow_words_total{language="en",model="scripted-shadow"} 5' in metrics
        assert 'flashcaption_shadow_word_differences_total{language="en",model="scripted-shadow"} 2' in metrics
        # A room set to no shadow: its finals are not decoded again.
        publish(running.url, speak("foxtrot"), "room=lobby")
        with urllib.request.urlopen(f"{base}/v1/rooms/lobby/transcript?format=json") as reply:
            assert [("shadows" in f, f["text"]) for f in json.load(reply)["finals"]] == [(False, "foxtrot")]
    finally:
        running.stop()
    from streaming.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite3")  # kept beside the finals, for exports after the server stopped
    assert [(r["seq"], r["text"]) for r in journal.shadows("hall")] == [(1, "bravo"), (2, "delta echo")]
    journal.delete_room("hall")
    assert journal.shadows("hall") == []
    journal.close()


def test_the_shadow_runs_at_the_lowest_priority_in_a_process_of_its_own():
    from concurrent.futures.process import BrokenProcessPool

    import numpy as np

    shadow = ShadowModel(functools.partial(ScriptedModel, name="scripted-shadow"))
    shadow.start()
    try:
        assert shadow.languages == ("en",)
        (pid,) = shadow._pool._processes  # type: ignore[union-attr]
        assert pid != os.getpid() and os.getpriority(os.PRIO_PROCESS, pid) == 19
        assert run_async(shadow.decode(speak("alpha"), "fr", None)).text == "alpha"  # a language it lacks: detected

        async def while_paused() -> tuple[bool, str]:
            shadow.pause(True)  # the primary decodes: the shadow's process is stopped
            decoding = asyncio.ensure_future(shadow.decode(speak("bravo"), "en", None))
            await asyncio.sleep(0.5)
            stopped = not decoding.done() and process_state(pid) == "T"
            shadow.pause(False)
            return stopped, (await decoding).text

        assert run_async(while_paused()) == (True, "bravo")
        os.kill(pid, 9)  # killed (out of memory, say): that decode fails, the next gets a new process
        with pytest.raises(BrokenProcessPool):
            run_async(shadow.decode(speak("bravo"), "en", None))
        assert run_async(shadow.decode(speak("charlie"), "en", None)).text == "charlie"
        assert run_async(shadow.decode(np.zeros(16000, np.float32), "en", None)).text == ""
    finally:
        shadow.close()


def test_a_shadow_that_cannot_be_opened_stops_the_server_with_why(tmp_path):
    server = CaptionServer(ServerConfig(port=0, data_dir=tmp_path, room_shadows={"*": "broken"}), ScriptedModel(),
                           {"broken": ShadowModel(_unavailable)})
    with pytest.raises(ValueError, match="shadow model broken could not be opened: no such weights"):
        run_async(server.start())
    server.rooms.close()
    with pytest.raises(ValueError, match="no shadow model whisper-base"):
        CaptionServer(ServerConfig(port=0, data_dir=tmp_path, room_shadows={"*": "whisper-base"}), ScriptedModel(), {})


def _unavailable() -> ScriptedModel:
    raise RuntimeError("no such weights")


@pytest.mark.slow
def test_compare_page_shows_moonshine_and_its_whisper_shadow_side_by_side(tmp_path, context):  # noqa: F811
    """The real thing: Moonshine captions a real recording, Whisper base shadows it, and the
    /compare page in Chromium shows both texts per final with their differences marked."""
    from decoder.models import load_model
    from decoder.runtime import RuntimeOptions

    # The shadow as serve --shadow whisper-base opens it (by name, in its own process).
    config = ServerConfig(port=0, data_dir=tmp_path, room_shadows={"*": "whisper-base"})
    running = ServerThread(CaptionServer(config, load_model("moonshine-base-en", RuntimeOptions()))).start()
    try:
        # Two recordings, a pause between: two finals. Offline, the models read the second
        # one's "Hester Prynne" differently ("Prinn", "Prin").
        import numpy as np

        audio = np.concatenate([CLIPS["en_jfk_inaugural"].audio, np.zeros(24000, np.float32), CLIPS["en_ls_1221-135766-0002f"].audio])
        with connect(f"{running.url}/v1/captions?room=pilot&shadow=1") as watcher:
            json.loads(watcher.recv(timeout=10))
            messages, code = publish(running.url, audio, "room=pilot")
            spoken = [f for f in finals(messages) if f["text"]]
            got = shadows_until(watcher, len(spoken), timeout=120)
        shadows = [m for m in got if m["type"] == "shadow"]
        assert code == 1000 and len(spoken) >= 2 and all(m["model"] == "whisper-base" and m["text"] for m in shadows)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{running.url.replace('ws://', 'http://')}/compare?room=pilot")
        # A function, not a string: the pages' Content-Security-Policy forbids eval.
        wait_for(page, "document.querySelectorAll('#rows tr').length >= n && !document.querySelector('td.pending')", 30, len(spoken))
        rows = page.eval_on_selector_all(
            "#rows tr", "rows => rows.map(r => [r.children[1].textContent, r.children[2].textContent, "
                        "r.querySelectorAll('del').length, r.querySelectorAll('ins').length])")
        assert page.text_content("#shadow-head") == "whisper-base (shadow)" and "moonshine" in (page.text_content("#primary-head") or "")
        assert page.text_content("#compared") == str(len(spoken)) and page.text_content("#waiting") == "0"
        # Each row: both texts, and exactly the words outside their longest common run marked.
        for (primary, shadow, deleted, inserted), final, other in zip(rows, spoken, shadows, strict=True):
            a, b = page_words(final["text"]), page_words(other["text"])
            assert page_words(primary) == a and page_words(shadow) == b
            common = longest_common(a, b)
            assert (deleted, inserted) == (len(a) - common, len(b) - common), (final["text"], other["text"])
        assert sum(deleted + inserted for *_, deleted, inserted in rows) >= 1  # the models read "Prynne" differently
        screenshot(page, "compare-live")
        assert not errors, errors
        page.close()
    finally:
        running.stop()


def page_words(text: str) -> list[str]:
    """Words as the /compare page compares them: lower case, letters, digits and apostrophes."""
    return [key for key in ("".join(c for c in word.lower() if c.isalnum() or c == "'") for word in text.split())]


def longest_common(a: list[str], b: list[str]) -> int:
    longest = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            longest[i][j] = longest[i + 1][j + 1] + 1 if a[i] == b[j] else max(longest[i + 1][j], longest[i][j + 1])
    return longest[0][0]


def process_state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, T stopped), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]


def test_a_shadow_stopped_mid_decode_still_closes():
    shadow = ShadowModel(functools.partial(ScriptedModel, name="scripted-shadow", compute_s=0.5))
    shadow.start()

    async def stopped_mid_decode() -> None:
        decoding = asyncio.ensure_future(shadow.decode(speak("alpha"), "en", None))
        await asyncio.sleep(0.1)
        shadow.pause(True)  # the primary started a decode: the shadow stops, mid-decode
        await asyncio.sleep(0.1)
        decoding.cancel()

    run_async(stopped_mid_decode())
    shadow.close(timeout_s=5)  # continued, then ended: shutdown never waits on a stopped process
    shadow.pause(True)  # after close: nothing to stop

