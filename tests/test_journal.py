"""Transcripts that survive: the journal, kill -9 of the server, seq continuity, exports."""

from __future__ import annotations

import html
import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import srt
import webvtt
from websockets.sync.client import connect

from decoder.context import context_from_json, context_to_json, parse_context
from streaming import auth
from streaming.config import ServerConfig
from streaming.export import MAX_LINE, MAX_LINES, render
from streaming.journal import Journal
from streaming.server import CaptionServer
from tests.conftest import CLIPS, ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_cli import flashcaption, free_port
from tests.test_server import finals, publish, receive_until

SR = 16000


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=30).read().decode("utf-8")


def test_two_speakers_export_to_valid_srt_and_vtt(server, tmp_path):
    results = {}

    def speak(name: str, clip: str) -> None:
        results[name] = finals(publish(server.url, CLIPS[clip].audio, f"room=panel&speaker={name}", pace=0.01)[0])

    threads = [threading.Thread(target=speak, args=a) for a in (("Ada", "en_ls_1995-1837-0001"), ("Grace", "en_jfk_inaugural"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    spoken = sorted(results["Ada"] + results["Grace"], key=lambda f: f["seq"])
    assert [f["seq"] for f in spoken] == list(range(1, len(spoken) + 1))
    base = server.url.replace("ws://", "http://")

    subtitles = list(srt.parse(_get(f"{base}/v1/rooms/panel/transcript?format=srt")))
    vtt = webvtt.from_buffer(__import__("io").StringIO(_get(f"{base}/v1/rooms/panel/transcript?format=vtt")))
    for cues in (subtitles, vtt.captions):
        assert len(cues) >= len(spoken)
    for cue in subtitles:
        assert cue.end > cue.start
        lines = cue.content.split("\n")
        assert len(lines) <= MAX_LINES + 1  # a long speaker label may take a line of its own
    for caption in vtt.captions:
        assert caption.voice in ("Ada", "Grace")
        assert all(len(line) <= MAX_LINE for line in caption.text.split("\n")) and len(caption.text.split("\n")) <= MAX_LINES
    # Every spoken word is in the subtitles, in order, for each speaker.
    for name in ("Ada", "Grace"):
        said = " ".join(f["text"] for f in results[name]).split()
        shown = " ".join(c.text.replace("\n", " ") for c in vtt.captions if c.voice == name).split()
        assert shown == said
    text = _get(f"{base}/v1/rooms/panel/transcript?format=txt")
    assert "Ada: " in text and "Grace: " in text
    rows = json.loads(_get(f"{base}/v1/rooms/panel/transcript?format=json"))["finals"]
    assert [r["seq"] for r in rows] == [f["seq"] for f in spoken]


@pytest.mark.slow  # `flashcaption serve` processes with the real model
def test_kill_9_loses_no_final_and_seq_continues(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    command = flashcaption("serve", "--port", str(port), "--device", "cpu", "--data-dir", str(data))

    def start() -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return process
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    url = f"ws://127.0.0.1:{port}"
    first = start()
    clip = CLIPS["en_jfk_inaugural"].audio
    seen = []
    with connect(f"{url}/v1/captions?room=keynote") as viewer, connect(f"{url}/v1/publish?room=keynote&speaker=JFK") as publisher:
        json.loads(viewer.recv(timeout=10))
        session = json.loads(publisher.recv(timeout=10))["session"]
        for offset in range(0, 9 * SR, 1600):  # three of JFK's four phrases, then the crash
            publisher.send((clip[offset : offset + 1600] * 32767).astype("<i2").tobytes())
            time.sleep(0.02)
        seen = [m for m in receive_until(viewer, lambda m: m["type"] == "final" and m["seq"] >= 2, timeout=60) if m["type"] == "final"]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert len(seen) >= 2

    second = start()
    try:
        # The journal may hold a final that was written but not yet sent when the server died.
        kept = json.loads(_get(f"http://127.0.0.1:{port}/v1/rooms/keynote/transcript?format=json"))["finals"]
        assert [r["seq"] for r in kept] == list(range(1, len(kept) + 1)) and len(kept) >= len(seen)
        with connect(f"{url}/v1/captions?room=keynote&since=0") as viewer:
            json.loads(viewer.recv(timeout=10))
            replayed = [json.loads(viewer.recv(timeout=10)) for _ in kept]
            assert replayed[: len(seen)] == seen  # every final a client had, after a kill -9
            seen = replayed
            # The publisher resumes its session on the new server process.
            messages, code = publish(url, CLIPS["en_arctic_a0024"].audio, f"room=keynote&resume={session}")
            new = finals(messages)
            assert code == 1000 and messages[0]["session"] == session
            assert new[0]["seq"] == seen[-1]["seq"] + 1  # no reuse, no gap
            assert new[0]["segment"] == seen[-1]["segment"] + 1 and new[0]["speaker"] == "JFK"
            assert new[0]["start"] >= seen[-1]["end"]  # the session's audio clock goes on
            live = receive_until(viewer, lambda m: m["type"] == "final" and m["seq"] == new[-1]["seq"], timeout=60)
            assert [m for m in live if m["type"] == "final"] == new  # live captions after the replay
        with connect(f"{url}/v1/captions?room=keynote&since={seen[0]['seq']}") as late:
            json.loads(late.recv(timeout=10))
            missing = [json.loads(late.recv(timeout=10)) for _ in range(len(seen) - 1 + len(new))]
            assert [m["seq"] for m in missing] == list(range(seen[0]["seq"] + 1, new[-1]["seq"] + 1))
        exported = subprocess.run(
            flashcaption("export", "--room", "keynote", "--format", "srt", "--url", url), capture_output=True, text=True, check=True
        ).stdout
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    for final in seen + new:
        assert final["text"].split()[0] in exported
    offline = subprocess.run(
        flashcaption("export", "--room", "keynote", "--format", "txt", "--data-dir", str(data)), capture_output=True, text=True, check=True
    ).stdout
    assert len(offline.splitlines()) == len(seen) + len(new)


def test_journal_rows_and_render_errors(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.last_seq("r") == 0
    for seq in (1, 2, 3):
        journal.append(
            {"room": "r", "seq": seq, "session": "s", "speaker": "", "segment": seq - 1, "text": "word " * 30 * seq,
             "language": "en", "start": float(seq), "end": seq + 2.0}, 1000.0 + seq, 1002.0 + seq,
        )
    assert journal.last_seq("r") == 3 and journal.last_seq("other") == 0
    assert [r["seq"] for r in journal.finals("r", since=1)] == [2, 3]
    cues = list(srt.parse(render(journal.finals("r"), "srt")))
    assert len(cues) > 3 and all(len(line) <= MAX_LINE for c in cues for line in c.content.split("\n"))
    assert cues[0].start.total_seconds() == 0.0  # wall clock counted from the room's first caption
    session = list(srt.parse(render(journal.finals("r"), "srt", clock="session")))
    assert session[0].start.total_seconds() == 1.0
    for bad in (("doc", "wall"), ("srt", "moon")):
        try:
            render([], *bad)
        except ValueError:
            continue
        raise AssertionError(bad)
    journal.close()


def test_every_format_holds_every_final_in_order_with_its_speaker(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    said = [("Ada", "alpha bravo"), ("Grace", "a longer final " + "that goes on " * 8 + "and ends"), ("Ada", "charlie, <delta> & echo")]
    for seq, (speaker, text) in enumerate(said, 1):
        final = {"room": "r", "seq": seq, "session": speaker, "speaker": speaker, "segment": seq, "text": text,
                 "language": "en", "start": 2.0 * seq, "end": 2.0 * seq + 1.5}
        journal.append(final, 1000.0 + 2 * seq, 1001.5 + 2 * seq)
    rows = journal.finals("r")
    journal.close()
    subtitles = list(srt.parse(render(rows, "srt")))
    vtt = webvtt.from_buffer(io.StringIO(render(rows, "vtt"))).captions
    for cues in (subtitles, vtt):
        assert len(cues) > len(said)  # the long final is split into several cues
        starts = [c.start for c in cues]
        assert starts == sorted(starts)
    shown = " ".join(c.content.replace("\n", " ") for c in subtitles).split()
    assert [w for w in shown if w not in ("Ada:", "Grace:")] == " ".join(text for _, text in said).split()
    assert shown[0] == "Ada:" and "Grace:" in shown
    for caption in vtt:
        assert caption.voice in ("Ada", "Grace")
        assert all(len(line) <= MAX_LINE for line in caption.text.split("\n")) and len(caption.text.split("\n")) <= MAX_LINES
    for name in ("Ada", "Grace"):
        spoken = " ".join(text for speaker, text in said if speaker == name).split()
        assert html.unescape(" ".join(c.text.replace("\n", " ") for c in vtt if c.voice == name)).split() == spoken
    assert [r["seq"] for r in json.loads(render(rows, "json"))["finals"]] == [1, 2, 3]
    lines = render(rows, "txt").splitlines()
    assert len(lines) == len(said)
    assert all(line.endswith(f"] {speaker}: {text}") for line, (speaker, text) in zip(lines, said))  # "[00:00:02] Grace: ..."


def test_retention_keeps_seq_and_rooms_can_be_deleted(scripted_server, tmp_path):
    server = scripted_server
    journal = Journal(tmp_path / "j.sqlite3")
    final = {"room": "r", "session": "s", "speaker": "", "segment": 0, "text": "hello", "language": "en", "start": 0.0, "end": 1.0}
    assert journal.append(final, 0.0, 1.0) == 1
    assert journal.append({**final, "segment": 1}, 0.0, 1.0) == 2
    journal.correct("r", 1, "hello there", None, "Ed", 0)
    journal.add_room_term("r", "Hester Prynne", "Ed")
    assert journal.delete_older_than(time.time() + 1) == 2 and journal.finals("r") == []
    assert journal.revisions("r") == [] and journal.room_terms() == {}  # corrections and editors' terms go too
    assert journal.last_seq("r") == 2  # retention never lets seq start again
    assert journal.delete_room("r") == 0 and journal.last_seq("r") == 0
    journal.close()

    publish(server.url, speak("alpha bravo"), "room=doomed")
    base = server.url.replace("ws://", "http://")
    admin = auth.create_token(auth.load_secret(server.server.config.data_dir), "*", "admin", 600)  # deleting takes one
    request = urllib.request.Request(f"{base}/v1/rooms/doomed", method="DELETE", headers={"Authorization": f"Bearer {admin}"})
    reply = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert reply["deleted_finals"] >= 1
    assert json.loads(_get(f"{base}/v1/rooms/doomed/transcript?format=json"))["finals"] == []
    with connect(f"{server.url}/v1/captions?room=busy-room") as viewer:
        json.loads(viewer.recv(timeout=10))  # joined: the handshake alone can beat the join
        busy = urllib.request.Request(f"{base}/v1/rooms/busy-room", method="DELETE", headers={"Authorization": f"Bearer {admin}"})
        try:
            urllib.request.urlopen(busy, timeout=30)
            raise AssertionError("deleting an occupied room must fail")
        except urllib.error.HTTPError as error:
            assert error.code == 409


def test_a_session_keeps_what_it_asked_for_until_it_ends(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    # A free-text context at the size limit whose items are also terms: kept as it was given.
    text = ", ".join(f"Speaker Number {i:03d}" for i in range(100))
    context = parse_context(text)
    journal.keep_session("s1", "r", "auto", context_to_json(context))
    journal.keep_session("s2", "r", "en,es", None)
    assert context_from_json(journal.session_settings("s1")["context"]) == context
    # configure: a new language; no new context keeps the one recorded.
    journal.keep_session("s1", "r", "de", None)
    assert journal.session_settings("s1")["language"] == "de"
    assert context_from_json(journal.session_settings("s1")["context"]) == context
    assert journal.session_settings("s2") == {"language": "en,es", "context": None}
    journal.end_session("s1")
    assert journal.session_settings("s1") is None and journal.session_settings("missing") is None
    # Retention forgets sessions with no final left; deleting the room forgets the rest.
    final = {"room": "r", "seq": 1, "session": "s2", "speaker": "", "segment": 0, "text": "hi", "language": "en", "start": 0.0, "end": 1.0}
    journal.append(final, 0.0, 1.0)
    journal.keep_session("s3", "r", "auto", None)
    journal.delete_older_than(time.time() - 60)
    assert journal.session_settings("s2") and journal.session_settings("s3")
    journal.delete_older_than(time.time() + 1)
    assert journal.session_settings("s2") is None and journal.session_settings("s3") is None
    journal.keep_session("s4", "r", "auto", None)
    journal.delete_room("r")
    assert journal.session_settings("s4") is None
    journal.close()


def test_a_session_resumed_on_a_model_without_its_language_gets_the_model_default(tmp_path):
    # The server restarted with another model: a Spanish session resumes in English, not refused.
    journal = Journal(tmp_path / "journal.sqlite3")
    final = {"room": "r", "seq": 1, "session": "0123456789ab", "speaker": "Ana", "segment": 3, "text": "hola",
             "language": "es", "start": 10.0, "end": 12.0}
    journal.append(final, time.time() - 2, time.time())
    journal.keep_session("0123456789ab", "r", "es", None)
    journal.close()
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel())).start()
    try:
        messages, code = publish(running.url, speak("alpha bravo"), "resume=0123456789ab")
        assert code == 1000 and messages[0]["language"] == "en"
        said = finals(messages)
        assert said and said[0]["segment"] == 4 and said[0]["speaker"] == "Ana" and said[0]["start"] >= 12.0
    finally:
        running.stop()
