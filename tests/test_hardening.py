"""What one client cannot do to a room or a server (each test names the hole it closes): real
servers on loopback ports with the scripted model (tests/scripted.py), real websockets clients."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sqlite3
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import srt
import webvtt
from websockets.sync.client import connect

from streaming import auth
from streaming.config import ServerConfig
from streaming.journal import Journal
from streaming.server import CaptionServer
from streaming.server import view as view_handler
from tests.conftest import ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_server import finals, pcm16, publish, receive_until, refused


@contextlib.contextmanager
def running(tmp_path: Path, **settings: Any) -> Iterator[ServerThread]:
    server = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, **settings), ScriptedModel())).start()
    try:
        yield server
    finally:
        server.stop()


def http(server: ServerThread, path: str, method: str = "GET", token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def health(server: ServerThread) -> dict[str, Any]:
    return json.loads(http(server, "/healthz")[1])


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def seed(data_dir: Path, room: str, count: int, speaker: str = "Ada") -> None:
    """``count`` finals in ``room``'s journal, written in one transaction (the server writes
    them one by one; the test needs the history, not the writes)."""
    Journal(data_dir / "journal.sqlite3").close()  # the schema
    db = sqlite3.connect(data_dir / "journal.sqlite3")
    text = "It was the first great sorrow of his life, not so much the loss of the cotton itself."
    now = time.time()
    with db:
        db.executemany(
            "INSERT INTO finals VALUES (?, ?, 's', ?, ?, ?, 'en', ?, ?, ?, ?, ?)",
            ((room, seq, speaker, seq, text, seq * 3.0, seq * 3.0 + 2.5, now + seq * 3.0, now + seq * 3.0 + 2.5, now) for seq in range(1, count + 1)),
        )
        db.execute("INSERT INTO rooms VALUES (?, ?)", (room, count))
    db.close()


# -- 1: one session, at most one live publisher -----------------------------------------------
def test_a_live_session_cannot_be_resumed_by_a_second_connection(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        with connect(f"{server.url}/v1/publish?room=r&mode=file") as first:
            session = json.loads(first.recv(timeout=10))["session"]
            message, code = refused(server.url, f"/v1/publish?resume={session}&room=r")
            assert code == 1008 and message["code"] == "bad_request" and "still live" in message["message"]
            # The first connection goes on as if nothing happened.
            for offset in range(0, len(audio := speak("alpha bravo")), 1600):
                first.send(pcm16(audio[offset : offset + 1600]))
            first.send(json.dumps({"type": "end"}))
            assert [f["text"] for f in finals(receive_until(first, lambda m: m["type"] == "final"))] == ["alpha bravo"]
        wait_for(lambda: health(server)["publishers"] == 0)
        assert http(server, "/v1/rooms/r", "DELETE")[0] == 200


@pytest.mark.parametrize("ending", ["resume and end", "expire"])
def test_counts_and_delete_stay_right_after_drop_resume_and_expiry(tmp_path: Path, ending: str) -> None:
    with running(tmp_path, resume_grace_s=1.0) as server:
        with connect(f"{server.url}/v1/publish?room=r") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            ws.send(pcm16(speak("alpha")[:8000]))
            ws.socket.shutdown(socket.SHUT_RDWR)  # dropped mid-utterance
        wait_for(lambda: metric(server, "flashcaption_sessions_resumable") == 1)
        assert http(server, "/v1/rooms/r", "DELETE")[0] == 409  # it may still come back
        if ending == "resume and end":
            messages, code = publish(server.url, speak("bravo"), f"resume={session}&room=r")
            assert code == 1000 and messages[0]["session"] == session
        else:
            wait_for(lambda: metric(server, "flashcaption_sessions_resumable") == 0)
        wait_for(lambda: health(server)["publishers"] == 0 and metric(server, "flashcaption_sessions_resumable") == 0)
        assert http(server, "/v1/rooms/r", "DELETE")[0] == 200


def metric(server: ServerThread, name: str) -> float:
    for line in http(server, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


# -- 6: parked sessions hold no publisher slot ---------------------------------------------------
def test_dropped_connections_cannot_lock_publishers_out(tmp_path: Path) -> None:
    with running(tmp_path, max_publishers_per_room=2, max_parked_per_address=3) as server:
        for _ in range(6):
            with connect(f"{server.url}/v1/publish?room=r") as ws:
                json.loads(ws.recv(timeout=10))
                ws.socket.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: health(server)["publishers"] == 0)
        # Parked sessions are bounded per address (the oldest ended), and take no slot.
        assert metric(server, "flashcaption_sessions_resumable") == 3
        messages, code = publish(server.url, speak("alpha"), "room=r")
        assert code == 1000 and [f["text"] for f in finals(messages)] == ["alpha"]


# -- 2: a viewer that never reads holds little, whatever the room's history ---------------------
def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_viewers_that_never_read_hold_a_bounded_amount_and_are_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(tmp_path, "big", 100_000)
    monkeypatch.setattr(view_handler, "SEND_STALL_S", 3.0)
    with running(tmp_path) as server:
        before = _rss_mb()
        stuck = []
        for _ in range(8):
            raw = socket.create_connection(("127.0.0.1", server.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read from it
            raw.sendall(
                b"GET /v1/captions?room=big&since=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            stuck.append(raw)
        wait_for(lambda: health(server)["viewers"] == 8)
        time.sleep(1.5)  # each has filled its socket and its page
        held = _rss_mb() - before
        print(f"8 viewers of 100,000 finals that never read: {held:.1f} MB held by the server")
        assert held < 64  # 818 MB before backlogs were paged
        # ... and they are closed once their sockets have taken nothing for SEND_STALL_S.
        wait_for(lambda: health(server)["viewers"] == 0, timeout=30)
        for raw in stuck:
            raw.close()


def test_a_backlog_arrives_whole_and_in_order_in_pages(tmp_path: Path) -> None:
    seed(tmp_path, "big", 1234)
    with running(tmp_path) as server, connect(f"{server.url}/v1/captions?room=big&since=17") as viewer:
        assert json.loads(viewer.recv(timeout=10))["seq"] == 1234
        seqs = [json.loads(viewer.recv(timeout=10))["seq"] for _ in range(1234 - 17)]
        assert seqs == list(range(18, 1235))


# -- 3: long work stays off the event loop -------------------------------------------------------
def test_health_answers_while_a_large_export_and_backlogs_run(tmp_path: Path) -> None:
    seed(tmp_path, "big", 100_000)
    with running(tmp_path) as server:
        done = threading.Event()
        result: dict[str, Any] = {}

        def export() -> None:
            result["status"], result["body"] = http(server, "/v1/rooms/big/transcript?format=srt")
            done.set()

        threading.Thread(target=export, daemon=True).start()
        with connect(f"{server.url}/v1/captions?room=big&since=0"):  # a backlog too, not read
            timings = []
            while not done.is_set():
                started = time.perf_counter()
                assert http(server, "/healthz")[0] == 200
                timings.append(time.perf_counter() - started)
                time.sleep(0.02)
        assert result["status"] == 200 and len(list(srt.parse(result["body"]))) >= 100_000
        print(f"/healthz during a 100,000-final export: {len(timings)} answers, median {statistics.median(timings) * 1000:.1f} ms, "
              f"max {max(timings) * 1000:.1f} ms")
        assert len(timings) >= 5 and statistics.median(timings) < 0.1 and max(timings) < 1.0


def test_exports_at_once_are_bounded(tmp_path: Path) -> None:
    seed(tmp_path, "big", 100_000)
    with running(tmp_path, max_exports=1) as server:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(http(server, "/v1/rooms/big/transcript?format=txt")[0])) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(statuses)[0] == 200 and 503 in statuses


# -- 7: figures need an operator's token when access control is on -------------------------------
def test_metrics_and_health_details_need_an_admin_token(tmp_path: Path) -> None:
    with running(tmp_path, auth="on") as server:
        secret = auth.load_secret(tmp_path)
        assert http(server, "/metrics")[0] == 401
        assert http(server, "/metrics", token=auth.create_token(secret, "r", "admin", 60))[0] == 401  # one room's admin
        assert http(server, "/metrics", token=auth.create_token(secret, "*", "view", 60))[0] == 401
        status, body = http(server, "/metrics", token=auth.create_token(secret, "*", "admin", 60))
        assert status == 200 and "flashcaption_publishers" in body
        assert json.loads(http(server, "/healthz")[1]) == {"status": "ok"}
        assert "publishers" in json.loads(http(server, "/healthz", token=auth.create_token(secret, "*", "admin", 60))[1])
        assert http(server, "/readyz")[0] == 200  # a load balancer's yes or no stays open


# -- 8: query numbers out of range -----------------------------------------------------------------
@pytest.mark.parametrize("since", ["99999999999999999999999999", "-1", "1e3", "9223372036854775808"])
def test_out_of_range_since_is_a_clear_error(scripted_server: ServerThread, since: str) -> None:
    message, code = refused(scripted_server.url, f"/v1/captions?room=r&since={since}")
    assert code == 1008 and message["code"] == "bad_request" and "since" in message["message"]


# -- 9: speaker names cannot forge subtitles ------------------------------------------------------
@pytest.mark.parametrize("name", ["A\u202eB", "A\u0085B", "A\u009bB", "A\x7fB", "A\u2028B", "A\u200bB", "x" * 65])
def test_speaker_names_with_control_or_format_characters_are_refused(scripted_server: ServerThread, name: str) -> None:
    message, code = refused(scripted_server.url, f"/v1/publish?room=r&speaker={quote(name)}")
    assert code == 1008 and "speaker" in message["message"]


def test_exports_stay_valid_whatever_the_speaker_is_called(tmp_path: Path) -> None:
    forger = "00:00:01,000 --> 00:09:09,000"
    with running(tmp_path) as server:
        messages, code = publish(server.url, speak("alpha bravo", "charlie"), f"room=r&speaker={quote(forger)}")
        assert code == 1000 and len(finals(messages)) == 2
        status, body = http(server, "/v1/rooms/r/transcript?format=srt")
        cues = list(srt.parse(body))
        assert status == 200 and len(cues) == 2 and all("-->" not in cue.content for cue in cues)
        assert cues[0].content.endswith("alpha bravo") and cues[1].content.endswith("charlie")
        vtt = webvtt.from_buffer(io.StringIO(http(server, "/v1/rooms/r/transcript?format=vtt")[1]))
        assert len(vtt.captions) == 2 and all("-->" not in caption.raw_text for caption in vtt.captions)


# -- 12: a limit is checked and taken in one step -----------------------------------------------
def test_a_burst_of_viewers_cannot_overshoot_the_room_limit(tmp_path: Path) -> None:
    seed(tmp_path, "crowd", 50)  # with since=, a join reads the journal: the old check raced it
    with running(tmp_path, max_viewers_per_room=5) as server:
        answers: list[str] = []
        lock = threading.Lock()
        with contextlib.ExitStack() as viewers:

            def join() -> None:
                with lock:
                    ws = viewers.enter_context(connect(f"{server.url}/v1/captions?room=crowd&since=0", open_timeout=30))
                message = json.loads(ws.recv(timeout=30))
                with lock:
                    answers.append(message["type"] if message["type"] == "ready" else message["code"])

            threads = [threading.Thread(target=join) for _ in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert answers.count("ready") == 5 and answers.count("overloaded") == 15
