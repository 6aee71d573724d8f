"""A human in the loop: editors' corrections of finals, as logic (the journal, the message), over a
real server with the scripted model (every viewer sees them, a resuming one too, only an edit
token may make them, exports carry the latest revision and the history, the post-edit rate), and
kill -9 of a server with the real model after a correction was acknowledged."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import srt
from websockets.sync.client import ClientConnection, connect

from streaming import auth
from streaming.export import post_edit
from streaming.journal import Conflict, Journal
from streaming.protocol import CorrectMessage, ProtocolError, parse_view_message
from tests.conftest import CLIPS
from tests.scripted import speak
from tests.test_auth import guarded  # noqa: F401  (the fixture: a server that needs tokens)
from tests.test_cli import flashcaption, free_port
from tests.test_server import finals, publish, receive_until

SR = 16000


def reply(ws) -> dict:
    """The next message that is not the editors' terms event (sent after each correction)."""
    while (message := json.loads(ws.recv(timeout=10)))["type"] == "terms":
        pass
    return message


def final_row(room: str, seq: int, text: str, language: str = "en") -> dict:
    return {"room": room, "seq": seq, "session": "s", "speaker": "Anna", "segment": seq - 1, "text": text, "language": language,
            "start": float(seq), "end": seq + 0.9}


# -- logic ---------------------------------------------------------------------------------------
def test_the_journal_keeps_every_revision_and_the_latest_is_the_final(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    for seq, text in enumerate(("Hester Prin walked.", "The scarlet letter."), 1):
        journal.append(final_row("hall", seq, text), 100.0 + seq, 100.9 + seq)
    first = journal.correct("hall", 1, "Hester Prynne walked.", None, "Ed", base=0)
    assert (first["revision"], first["before_text"], first["speaker"], first["language"]) == (1, "Hester Prin walked.", "Anna", "en")
    with pytest.raises(Conflict, match="revision 1 by Ed"):
        journal.correct("hall", 1, "Hester Prynne walks.", None, "Flo", base=0)  # made on the text Ed replaced
    second = journal.correct("hall", 1, "Hester Prynne walked on.", "Narrator", "Flo", base=1)
    assert second["revision"] == 2 and second["before_text"] == "Hester Prynne walked." and second["before_speaker"] == "Anna"
    with pytest.raises(KeyError):
        journal.correct("hall", 9, "x", None, "Ed", base=0)
    rows = journal.finals("hall")
    assert [(r["text"], r["speaker"], r["revision"]) for r in rows] == [("Hester Prynne walked on.", "Narrator", 2),
                                                                          ("The scarlet letter.", "Anna", 0)]
    assert [(r["seq"], r["revision"], r["editor"]) for r in journal.revisions("hall")] == [(1, 1, "Ed"), (1, 2, "Flo")]
    assert [(r["seq"], r["revision"], r["text"]) for r in journal.corrected("hall", 0, 2)] == [(1, 2, "Hester Prynne walked on.")]
    assert journal.corrected("hall", 1, 2) == []
    journal.delete_room("hall")
    assert journal.revisions("hall") == [] and journal.finals("hall") == []
    journal.close()


def test_a_journal_from_before_corrections_is_brought_up_to_date(tmp_path):
    path = tmp_path / "journal.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE finals (room TEXT NOT NULL, seq INTEGER NOT NULL, session TEXT NOT NULL, speaker TEXT NOT NULL,"
        " segment INTEGER NOT NULL, text TEXT NOT NULL, language TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,"
        " wall_start REAL NOT NULL, wall_end REAL NOT NULL, written REAL NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID;"
        "INSERT INTO finals VALUES ('hall', 1, 's', '', 0, 'Old text.', 'en', 0, 1, 100, 101, 100);"
    )
    old.commit()
    old.close()
    journal = Journal(path)
    assert journal.finals("hall")[0]["revision"] == 0
    assert journal.correct("hall", 1, "New text.", None, "Ed", 0)["revision"] == 1
    journal.close()


def test_a_correction_message_is_read_or_refused():
    assert parse_view_message('{"type": "correct", "seq": 3, "text": "  Hester   Prynne ", "base": 1}') == CorrectMessage(3, "Hester Prynne", None, 1)
    assert parse_view_message('{"type": "correct", "seq": 3, "text": "x", "speaker": "Anna"}').speaker == "Anna"
    for bad in ('{"type": "correct", "seq": 0, "text": "x"}', '{"type": "correct", "seq": true, "text": "x"}',
                '{"type": "correct", "seq": 1, "text": 5}', '{"type": "correct", "seq": 1, "text": "a\\nb"}',
                '{"type": "correct", "seq": 1, "text": "' + "x" * 2001 + '"}', '{"type": "correct", "seq": 1, "text": "x", "base": -1}',
                '{"type": "correct", "seq": 1, "text": "x", "speaker": "a\\u0000"}', '{"type": "shout"}', "[1]", "not json"):
        with pytest.raises(ProtocolError) as refusal:
            parse_view_message(bad)
        assert refusal.value.code == "bad_request"


def test_the_post_edit_rate_counts_words_changed_against_the_machine_s_text():
    rows = [final_row("r", 1, "Hester Prynne walked on."), final_row("r", 2, "The scarlet letter."), final_row("r", 3, "你好世界", "zh")]
    revisions = [{"seq": 1, "before_text": "Hester Prin walked.", "revision": 1}, {"seq": 1, "before_text": "Hester Prynne walked.", "revision": 2}]
    rate = post_edit(rows, revisions)
    # "Hester Prin walked." -> "Hester Prynne walked on.": one word changed, one added, over 3 + 3 English words.
    assert rate["by_language"]["en"] == {"words": 6, "words_edited": 2, "per_100_words": 33.33}
    assert rate["by_language"]["zh"]["words"] == 4 and rate["corrections"] == 2 and rate["corrected_finals"] == 1


# -- over a real server (scripted model) ---------------------------------------------------------
def _token(server, role: str, room: str = "hall") -> str:
    return auth.create_token(server.secret, room, role, 600)


@contextlib.contextmanager
def _viewer(server, room: str, role: str = "view", editor: str = "") -> Iterator[ClientConnection]:
    query = f"room={room}&token={_token(server, role, room)}" + (f"&editor={editor}" if editor else "")
    with connect(f"{server.url}/v1/captions?{query}") as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        yield viewer


def test_a_correction_reaches_every_viewer_and_a_resuming_one(guarded, caplog):  # noqa: F811
    room = f"hall-{uuid.uuid4().hex[:6]}"
    stack = contextlib.ExitStack()
    watching = [stack.enter_context(_viewer(guarded, room)) for _ in range(2)]
    editor = stack.enter_context(_viewer(guarded, room, "edit", editor="Ed"))
    messages, code = publish(guarded.url, speak("alpha bravo", "charlie delta", "echo"), f"room={room}&token={_token(guarded, 'publish', room)}")
    published = finals(messages)
    assert code == 1000 and [f["text"] for f in published] == ["alpha bravo", "charlie delta", "echo"]
    for viewer in [*watching, editor]:
        receive_until(viewer, lambda m: m.get("seq") == 3, timeout=10)
    editor.send(json.dumps({"type": "correct", "seq": 2, "text": "Charlie Delta!", "speaker": "Anna", "base": 0}))
    for viewer in [*watching, editor]:
        (correction,) = [m for m in receive_until(viewer, lambda m: m["type"] == "correction", timeout=10)]
        assert {k: correction[k] for k in ("seq", "text", "speaker", "revision", "editor")} == {
            "seq": 2, "text": "Charlie Delta!", "speaker": "Anna", "revision": 1, "editor": "Ed"}
        assert abs(correction["at"] - time.time()) < 5
    # Made on the revision someone else replaced: refused to its sender alone, with the revision now.
    editor.send(json.dumps({"type": "correct", "seq": 2, "text": "charlie delta", "base": 0}))
    refused = reply(editor)
    assert refused["type"] == "correction_refused" and refused["code"] == "conflict" and refused["revision"] == 1
    editor.send(json.dumps({"type": "correct", "seq": 99, "text": "x", "base": 0}))
    assert "no final 99" in reply(editor)["message"]
    # A view token cannot edit: refused and logged, and the viewer stays connected.
    with caplog.at_level(logging.WARNING):
        watching[0].send(json.dumps({"type": "correct", "seq": 1, "text": "hijacked", "base": 0}))
        refused = json.loads(watching[0].recv(timeout=10))
    assert refused["type"] == "correction_refused" and refused["code"] == "unauthorized" and "cannot edit" in refused["message"]
    assert any("refused to edit" in r.getMessage() for r in caplog.records)
    # An editor who floods is slowed down, not served without bound.
    for _ in range(12):
        editor.send(json.dumps({"type": "correct", "seq": 3, "text": "echo", "base": 99}))
    answers = [reply(editor) for _ in range(12)]
    assert any(a["code"] == "overloaded" for a in answers)
    stack.close()
    # A viewer that resumes after seq 3 gets the latest revision of what it may be showing...
    with connect(f"{guarded.url}/v1/captions?room={room}&since=3&token={_token(guarded, 'view', room)}") as late:
        json.loads(late.recv(timeout=10))
        correction = json.loads(late.recv(timeout=10))
        assert correction["type"] == "correction" and correction["seq"] == 2 and correction["text"] == "Charlie Delta!"
    # ... and one that replays from the start gets the final as it stands now.
    with connect(f"{guarded.url}/v1/captions?room={room}&since=0&token={_token(guarded, 'view', room)}") as replay:
        json.loads(replay.recv(timeout=10))
        replayed = [json.loads(replay.recv(timeout=10)) for _ in range(3)]
    assert [(f["text"], f["speaker"], f.get("revision", 0)) for f in replayed] == [
        ("alpha bravo", "", 0), ("Charlie Delta!", "Anna", 1), ("echo", "", 0)]


def test_exports_carry_the_latest_revision_the_history_and_the_post_edit_rate(guarded):  # noqa: F811
    room = f"export-{uuid.uuid4().hex[:6]}"
    publish(guarded.url, speak("alpha bravo charlie", "delta"), f"room={room}&token={_token(guarded, 'publish', room)}")
    with _viewer(guarded, room, "edit", editor="Ed") as editor:
        editor.send(json.dumps({"type": "correct", "seq": 1, "text": "alpha bravo charles", "base": 0}))
        receive_until(editor, lambda m: m["type"] == "correction", timeout=10)
        editor.send(json.dumps({"type": "correct", "seq": 1, "text": "Alpha Bravo Charles", "base": 1}))
        receive_until(editor, lambda m: m["type"] == "correction", timeout=10)
    base = f"{guarded.url.replace('ws://', 'http://')}/v1/rooms/{room}/transcript"
    headers = {"Authorization": f"Bearer {_token(guarded, 'edit', room)}"}  # the history is the editors' (revisions=1)

    def get(query: str) -> str:
        return urllib.request.urlopen(urllib.request.Request(f"{base}?{query}", headers=headers), timeout=10).read().decode()

    assert [c.content for c in srt.parse(get("format=srt"))] == ["Alpha Bravo Charles", "delta"]
    document = json.loads(get("format=json"))
    assert document["finals"][0]["text"] == "Alpha Bravo Charles" and document["finals"][0]["revision"] == 2
    assert document["post_edit"]["words"] == 4 and document["post_edit"]["words_edited"] == 1  # charlie -> charles (case aside)
    history = json.loads(get("format=json&revisions=1"))["finals"]
    assert [(r["revision"], r["before_text"], r["text"], r["editor"]) for r in history[0]["revisions"]] == [
        (1, "alpha bravo charlie", "alpha bravo charles", "Ed"), (2, "alpha bravo charles", "Alpha Bravo Charles", "Ed")]
    assert history[1]["revisions"] == []
    metrics = urllib.request.urlopen(urllib.request.Request(
        guarded.url.replace("ws://", "http://") + "/metrics", headers={"Authorization": f"Bearer {_token(guarded, 'admin', '*')}"}), timeout=10).read().decode()
    labels = 'language="en",model="scripted-en"'
    for name in ("flashcaption_corrections_total", "flashcaption_words_edited_total", "flashcaption_finals_total", "flashcaption_words_captioned_total"):
        assert f"{name}{{{labels}}} " in metrics, name
    assert f'flashcaption_final_latency_by_language_seconds_count{{{labels}}} ' in metrics


# -- kill -9 after a correction was acknowledged (real model) -------------------------------------
@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_correction(tmp_path):
    port, data = free_port(), tmp_path / "data"
    command = flashcaption("serve", "--port", str(port), "--device", "cpu", "--data-dir", str(data))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        url = f"ws://127.0.0.1:{port}"
        messages, _ = publish(url, CLIPS["en_jfk_inaugural"].audio, "room=keynote&speaker=JFK")
        first = finals(messages)[0]
        with connect(f"{url}/v1/captions?room=keynote&editor=Ed") as editor:
            json.loads(editor.recv(timeout=10))
            editor.send(json.dumps({"type": "correct", "seq": first["seq"], "text": "And so, my fellow Americans:", "base": 0}))
            acknowledged = receive_until(editor, lambda m: m["type"] == "correction", timeout=10)[-1]
        os.kill(process.pid, signal.SIGKILL)  # at once, after the correction reached its editor
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    exported = json.loads(subprocess.run(flashcaption("export", "--room", "keynote", "--format", "json", "--revisions", "--data-dir", str(data)),
                                         capture_output=True, text=True, check=True).stdout)
    kept = exported["finals"][0]
    assert kept["text"] == acknowledged["text"] and kept["revision"] == 1
    assert [(r["editor"], r["before_text"]) for r in kept["revisions"]] == [("Ed", first["text"])]


def test_watch_prints_a_correction_as_a_line_of_its_own():
    import io

    from streaming.client import CaptionPrinter

    out = io.StringIO()
    printer = CaptionPrinter(out, show_speaker=True)
    printer({"type": "final", "seq": 7, "text": "Hester Prin walked.", "speaker": "Anna", "session": "s"})
    printer({"type": "correction", "seq": 7, "text": "Hester Prynne walked.", "speaker": "Anna", "revision": 1, "editor": "Ed"})
    assert out.getvalue().splitlines() == ["Anna: Hester Prin walked.", "[#7 corrected by Ed] Anna: Hester Prynne walked."]


# -- review delay --------------------------------------------------------------------------------
def test_a_room_under_review_gives_its_audience_finals_after_the_delay_and_editors_at_once(tmp_path):
    import threading

    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread
    from tests.scripted import ScriptedModel

    delay = 1.0
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, room_review_delays={"stage": delay}), ScriptedModel())).start()
    arrivals: dict[str, list[tuple[float, dict]]] = {"audience": [], "editor": []}
    try:
        with connect(f"{running.url}/v1/captions?room=stage") as audience, connect(f"{running.url}/v1/captions?room=stage&editor=Ed") as editor:
            for client in (audience, editor):
                json.loads(client.recv(timeout=10))

            def listen(name: str, client) -> None:
                with contextlib.suppress(Exception):
                    while True:
                        message = json.loads(client.recv(timeout=6))
                        arrivals[name].append((time.monotonic(), message))

            listeners = [threading.Thread(target=listen, args=(name, client)) for name, client in (("audience", audience), ("editor", editor))]
            for listener in listeners:
                listener.start()
            messages, _ = publish(running.url, speak("alpha bravo", "charlie", "delta echo foxtrot", "golf"), "room=stage", pace=0.02)
            time.sleep(0.3)
            # Corrected while held back: the audience gets the corrected final, not the original.
            last = finals(messages)[-1]
            editor.send(json.dumps({"type": "correct", "seq": last["seq"], "text": "Golf!", "base": 0}))
            for listener in listeners:
                listener.join(20)
        with connect(f"{running.url}/v1/captions?room=stage&since=0") as late:  # and from the journal, all of them
            json.loads(late.recv(timeout=10))
            replayed = [json.loads(late.recv(timeout=10)) for _ in range(4)]
    finally:
        running.stop()
    heard = {name: [(t, m) for t, m in got if m["type"] == "final"] for name, got in arrivals.items()}
    assert [m["seq"] for _, m in heard["audience"]] == [m["seq"] for _, m in heard["editor"]] == [1, 2, 3, 4]  # in order, none lost
    assert not [m for _, m in arrivals["audience"] if m["type"] in ("partial", "correction")]  # no partials for the audience
    assert [m for _, m in arrivals["editor"] if m["type"] == "partial"]  # editors see them
    waits = [a - e for (a, _), (e, _) in zip(heard["audience"], heard["editor"])]
    print("review delay measured (s):", [round(w, 3) for w in waits])
    assert all(abs(wait - delay) < 0.1 for wait in waits), waits  # each final, the delay later
    assert heard["audience"][-1][1]["text"] == "Golf!" and heard["audience"][-1][1]["revision"] == 1
    assert replayed[-1]["text"] == "Golf!"


def test_review_delays_are_read_from_the_command_line():
    from streaming.cli import parse_review_delays

    assert parse_review_delays(["stage=4s", "lobby=500ms", "*=2"]) == {"stage": 4.0, "lobby": 0.5, "*": 2.0}
    for bad in ("stage", "stage=4h", "stage=61s", "a b=1"):
        with pytest.raises(ValueError):
            parse_review_delays([bad])


# -- learning from corrections -------------------------------------------------------------------
def test_terms_corrections_put_in_more_than_once_are_suggested():
    from streaming.room_settings import suggested_terms

    revisions = [{"before_text": "Esther Prin walked.", "text": "Hester Prynne walked."},
                 {"before_text": "and then hester prin said", "text": "and then Hester Prynne said"},
                 {"before_text": "The letter.", "text": "The scarlet letter."}]
    assert suggested_terms(revisions, known=set()) == ["Hester Prynne"]
    assert suggested_terms(revisions, known={"hester prynne"}) == []
    assert suggested_terms(revisions, known=set(), least=1) == ["Hester Prynne", "scarlet"]


def test_an_editor_adds_a_term_that_live_sessions_and_later_ones_decode_with(tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread
    from tests.scripted import ScriptedModel

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        publish(running.url, speak("alpha bravo", "charlie"), "room=hall")
        with connect(f"{running.url}/v1/captions?room=hall&editor=Ed") as editor, connect(f"{running.url}/v1/publish?room=hall") as speaker:
            json.loads(editor.recv(timeout=10))
            json.loads(speaker.recv(timeout=10))
            assert receive_until(editor, lambda m: m["type"] == "terms", timeout=10)[-1]["suggested"] == []
            editor.send(json.dumps({"type": "correct", "seq": 1, "text": "Hester Prynne bravo", "base": 0}))
            editor.send(json.dumps({"type": "correct", "seq": 2, "text": "Hester Prynne.", "base": 0}))
            terms = [m for m in receive_until(editor, lambda m: m["type"] == "terms" and m["suggested"], timeout=10) if m["type"] == "terms"]
            assert terms[-1] == {"type": "terms", "room": "hall", "terms": [], "suggested": ["Hester Prynne"]}
            editor.send(json.dumps({"type": "add_term", "term": " Hester  Prynne "}))
            terms = receive_until(editor, lambda m: m["type"] == "terms" and m["terms"], timeout=10)[-1]
            assert terms == {"type": "terms", "room": "hall", "terms": ["Hester Prynne"], "suggested": []}
            (live,) = running.server.sessions.live.values()  # the publisher still speaking
            assert [t.text for t in live.session.context.terms] == ["Hester Prynne"]
            editor.send(json.dumps({"type": "add_term", "term": "x" * 61}))
            assert reply(editor)["code"] == "bad_request"  # no term: too long
    finally:
        running.stop()
    again = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        assert [t.text for t in again.server.settings.context("hall").terms] == ["Hester Prynne"]  # kept in the journal
        assert again.server.settings.context("lobby") is None
    finally:
        again.stop()


# -- review fixes (a second reader) --------------------------------------------------------------
def test_a_held_final_is_the_editors_alone_in_exports_too_and_across_a_restart(tmp_path):
    import logging as logging_module

    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread
    from tests.scripted import ScriptedModel

    delay = 6.0
    config = ServerConfig(port=0, data_dir=tmp_path, auth="on", room_review_delays={"stage": delay, "lobby": 0.0, "*": 9.0})
    running = ServerThread(CaptionServer(config, ScriptedModel())).start()
    secret = auth.load_secret(tmp_path)
    view, edit = (auth.create_token(secret, "stage", role, 600) for role in ("view", "edit"))
    assert running.server.settings.review_delay("lobby") == 0.0 and running.server.settings.review_delay("hall") == 9.0
    try:
        publish(running.url, speak("alpha bravo", "charlie"), f"room=stage&token={auth.create_token(secret, 'stage', 'publish', 600)}")
        base = running.url.replace("ws://", "http://") + "/v1/rooms/stage/transcript?format=json"

        def export(token: str, extra: str = "") -> dict:
            request = urllib.request.Request(base + extra, headers={"Authorization": f"Bearer {token}"})
            return json.loads(urllib.request.urlopen(request, timeout=10).read())

        assert len(export(edit)["finals"]) == 2 and export(view)["finals"] == []  # held back from the audience's export too
        with pytest.raises(urllib.error.HTTPError) as refused:
            export(view, "&revisions=1")
        assert refused.value.code == 401
        refused.value.close()  # (an answer left open would hold the server's shutdown for its close timeout)
        # A viewer's flood of refused corrections is logged once.
        with connect(f"{running.url}/v1/captions?room=stage&token={view}") as viewer:
            json.loads(viewer.recv(timeout=10))
            with contextlib.ExitStack():
                handler_records: list[logging_module.LogRecord] = []
                handler = logging_module.Handler()
                handler.emit = handler_records.append  # type: ignore[method-assign]
                logging_module.getLogger("streaming.server.view").addHandler(handler)
                try:
                    for _ in range(6):
                        viewer.send(json.dumps({"type": "correct", "seq": 1, "text": "x", "base": 0}))
                    answers = [reply(viewer) for _ in range(6)]
                finally:
                    logging_module.getLogger("streaming.server.view").removeHandler(handler)
        assert all(a["code"] == "unauthorized" for a in answers)
        assert len([r for r in handler_records if "refused to edit" in r.getMessage()]) == 1
        # Finals of a room under review (every room but stage and lobby: 9 s) just before a restart.
        publish(running.url, speak("delta"), f"room=hall&token={auth.create_token(secret, 'hall', 'publish', 600)}")
    finally:
        running.stop()
    # Restarted within the delay: the audience still waits for what was held.
    again = ServerThread(CaptionServer(config, ScriptedModel())).start()
    try:
        journal = Journal(tmp_path / "journal.sqlite3")
        written = journal.finals("hall")[0]["written"]
        journal.close()
        assert time.time() < written + 9.0 - 1  # the test is still inside the delay
        with connect(f"{again.url}/v1/captions?room=hall&since=0&token={auth.create_token(secret, 'hall', 'view', 600)}") as audience:
            json.loads(audience.recv(timeout=10))
            first = json.loads(audience.recv(timeout=12))
            received = time.time()
        assert first["seq"] == 1 and received >= written + 9.0 - 0.1  # released at its time, not at once
    finally:
        again.stop()


def test_a_timing_arrow_cannot_be_made_out_of_a_corrected_text():
    from streaming.export import to_srt

    row = {"text": "this year 00:01:00,000 --->00:01:05,000 and ---> more", "speaker": "", "start": 0.0, "end": 2.0}
    cues = list(srt.parse(to_srt([row], clock="session")))
    assert len(cues) == 1 and "-->" not in cues[0].content


def test_an_added_term_leaves_a_publisher_s_own_context_alone(tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.conftest import ServerThread
    from tests.scripted import ScriptedModel

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        with (connect(f"{running.url}/v1/publish?room=hall") as own, connect(f"{running.url}/v1/publish?room=hall") as plain,
              connect(f"{running.url}/v1/captions?room=hall&editor=Ed") as editor):
            for ws in (own, plain, editor):
                json.loads(ws.recv(timeout=10))
            own.send(json.dumps({"type": "config", "context": {"terms": ["Dimmesdale"]}}))
            time.sleep(0.3)
            editor.send(json.dumps({"type": "add_term", "term": "Hester Prynne"}))
            receive_until(editor, lambda m: m["type"] == "terms" and m["terms"], timeout=10)
            contexts = sorted(tuple(t.text for t in p.session.context.terms) for p in running.server.sessions.live.values())
            assert contexts == [("Dimmesdale",), ("Hester Prynne",)]
    finally:
        running.stop()


def test_a_room_takes_at_most_its_share_of_corrections_whoever_sends_them(tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from streaming.server.view import CORRECTIONS_PER_S, ROOM_EDITS_PER_S
    from tests.conftest import ServerThread
    from tests.scripted import ScriptedModel

    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        publish(running.url, speak("alpha"), "room=hall")
        editors = 2 * ROOM_EDITS_PER_S // CORRECTIONS_PER_S + 1  # together past the room's bound, each within its own
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(connect(f"{running.url}/v1/captions?room=hall&editor=E{n}")) for n in range(editors)]
            for ws in sockets:
                json.loads(ws.recv(timeout=10))
            for ws in sockets:
                for _ in range(2 * CORRECTIONS_PER_S):
                    ws.send(json.dumps({"type": "correct", "seq": 1, "text": "alpha", "base": 999}))  # conflicts: cheap, counted
            answers = [reply(ws) for ws in sockets for _ in range(2 * CORRECTIONS_PER_S)]
    finally:
        running.stop()
    refused = [a for a in answers if a["code"] == "overloaded"]
    assert refused and all("room hall takes at most" in a["message"] for a in refused)
    assert len(answers) - len(refused) <= 2 * ROOM_EDITS_PER_S
