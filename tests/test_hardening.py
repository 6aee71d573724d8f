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

import numpy as np
import pytest
import srt
import webvtt
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming import auth
from streaming.access import client_address, parse_networks
from streaming.config import ServerConfig
from streaming.journal import Journal
from streaming.server import CaptionServer
from streaming.server.publish import TAKEN_OVER
from tests.conftest import ServerThread
from tests.scripted import ScriptedModel, script, speak
from tests.test_server import finals, pcm16, publish, receive_all, refused


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


def admin(data_dir: Path) -> str:
    """An admin token for every room, from the server's secret in ``data_dir``."""
    return auth.create_token(auth.load_secret(data_dir), "*", "admin", 600)


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
            "INSERT INTO finals (room, seq, session, speaker, segment, text, language, start, end, wall_start, wall_end, written)"
            " VALUES (?, ?, 's', ?, ?, ?, 'en', ?, ?, ?, ?, ?)",
            ((room, seq, speaker, seq, text, seq * 3.0, seq * 3.0 + 2.5, now + seq * 3.0, now + seq * 3.0 + 2.5, now) for seq in range(1, count + 1)),
        )
        db.execute("INSERT INTO rooms VALUES (?, ?)", (room, count))
    db.close()


# -- 1: one session, at most one live publisher -----------------------------------------------
def test_a_live_session_resumed_on_another_connection_is_taken_over(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        with connect(f"{server.url}/v1/publish?room=r&mode=file") as first:
            session = json.loads(first.recv(timeout=10))["session"]
            heard = speak("alpha bravo")
            for offset in range(0, len(heard) * 3 // 4, 1600):  # the last word not yet finished
                first.send(pcm16(heard[offset : min(offset + 1600, len(heard) * 3 // 4)]))
            with connect(f"{server.url}/v1/publish?resume={session}&room=r&mode=file") as second:
                ready = json.loads(second.recv(timeout=10))
                assert ready["type"] == "ready" and ready["session"] == session, ready
                # The old connection is told why it was closed, after what it sent was captioned.
                with pytest.raises(ConnectionClosed):
                    while True:
                        first.recv(timeout=10)
                assert first.close_code == TAKEN_OVER and "resumed on another connection" in (first.close_reason or "")
                assert health(server)["publishers"] == 1
                rest = speak("charlie")
                for offset in range(0, len(rest), 1600):
                    second.send(pcm16(rest[offset : offset + 1600]))
                second.send(json.dumps({"type": "end"}))
                assert [f["text"] for f in finals(receive_all(second))] == ["charlie"]
        wait_for(lambda: health(server)["publishers"] == 0 and metric(server, "flashcaption_sessions_resumable") == 0)
        kept = json.loads(http(server, "/v1/rooms/r/transcript")[1])["finals"]
        assert [(f["session"], f["segment"]) for f in kept] == [(session, 0), (session, 1)] and kept[1]["text"] == "charlie"
        assert http(server, "/v1/rooms/r", "DELETE", token=admin(tmp_path))[0] == 200


@pytest.mark.parametrize("ending", ["resume and end", pytest.param("expire", marks=pytest.mark.slow)])
def test_counts_and_delete_stay_right_after_drop_resume_and_expiry(tmp_path: Path, ending: str) -> None:
    with running(tmp_path, resume_grace_s=1.0) as server:
        with connect(f"{server.url}/v1/publish?room=r") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            ws.send(pcm16(speak("alpha")[:8000]))
            ws.socket.shutdown(socket.SHUT_RDWR)  # dropped mid-utterance
        wait_for(lambda: metric(server, "flashcaption_sessions_resumable") == 1)
        assert http(server, "/v1/rooms/r", "DELETE", token=admin(tmp_path))[0] == 409  # it may still come back
        if ending == "resume and end":
            messages, code = publish(server.url, speak("bravo"), f"resume={session}&room=r")
            assert code == 1000 and messages[0]["session"] == session
        else:
            wait_for(lambda: metric(server, "flashcaption_sessions_resumable") == 0)
        wait_for(lambda: health(server)["publishers"] == 0 and metric(server, "flashcaption_sessions_resumable") == 0)
        assert http(server, "/v1/rooms/r", "DELETE", token=admin(tmp_path))[0] == 200


def test_resuming_a_live_session_that_has_journaled_a_final_leaves_one_publisher(tmp_path: Path) -> None:
    # The case as found: the old code revived the session from the journal as a second publisher.
    with running(tmp_path) as server:
        with connect(f"{server.url}/v1/publish?room=r&mode=file") as first:
            session = json.loads(first.recv(timeout=10))["session"]
            heard = speak("alpha")  # a whole utterance and its pause: its final is journaled
            for offset in range(0, len(heard), 1600):
                first.send(pcm16(heard[offset : offset + 1600]))
            while json.loads(first.recv(timeout=10))["type"] != "final":
                pass
            with connect(f"{server.url}/v1/publish?resume={session}&room=r&mode=file") as second:
                assert json.loads(second.recv(timeout=10))["type"] == "ready"
                receive_all(first, timeout=10)
                assert first.close_code == TAKEN_OVER and health(server)["publishers"] == 1
                second.send(json.dumps({"type": "end"}))
                receive_all(second, timeout=10)
        wait_for(lambda: health(server)["publishers"] == 0 and metric(server, "flashcaption_sessions_resumable") == 0)
        assert http(server, "/v1/rooms/r", "DELETE", token=admin(tmp_path))[0] == 200


def metric(server: ServerThread, name: str) -> float:
    for line in http(server, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


# -- 4: a publisher faster than the decoder ------------------------------------------------------
def _upgrade(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


@pytest.mark.slow  # a minute of audio through a slowed decoder
def test_a_recording_sent_at_full_speed_is_held_back_and_captioned_whole(tmp_path: Path) -> None:
    texts = [script(6, start=i) for i in range(18)]  # 18 utterances, a minute of audio
    audio = speak(*texts)
    assert len(audio) > 55 * 16000
    # Decoding (0.1 s a decode: several seconds) is far slower than sending (all at once); pings every 0.3 s.
    with running(tmp_path, decode_delay_s=0.1, file_backlog_s=3.0, keepalive_s=0.3) as server:
        backlog: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                backlog.append(metric(server, "flashcaption_audio_backlog_seconds"))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            messages, code = publish(server.url, audio, "room=recording")
        finally:
            stop.set()
            watcher.join()
    # Captioned whole on a connection that lived through the holds (no keepalive 1011) ...
    assert code == 1000
    assert [f["text"] for f in finals(messages)] == texts
    # ... with the audio not yet decoded held near the bound (3 s, plus what waits for the next
    # partial and one message), where reading it all at once let it reach most of the minute.
    print(f"largest backlog: {max(backlog):.1f} s of audio over {len(backlog)} samples")
    assert 2.0 < max(backlog) < 3.0 + 3.0 + 1.0


def test_live_audio_far_ahead_of_real_time_is_refused_at_once_with_its_captions_so_far(tmp_path: Path) -> None:
    texts = [script(6, start=i) for i in range(18)]  # a minute of speech, sent at 4x in live mode
    audio = (np.clip(speak(*texts), -1, 1) * 32767).astype("<i2").tobytes()
    with running(tmp_path, audio_burst_s=3.0) as server, connect(f"{server.url}/v1/captions?room=r") as viewer:
        json.loads(viewer.recv(timeout=10))
        with connect(f"{server.url}/v1/publish?room=r") as ws:
            json.loads(ws.recv(timeout=10))
            sent = 0
            with contextlib.suppress(ConnectionClosed):
                for offset in range(0, len(audio), 3200):  # 0.1 s of audio every 25 ms
                    ws.send(audio[offset : offset + 3200])
                    sent = offset + 3200
                    time.sleep(0.025)
            received = receive_all(ws, timeout=10)
        assert ws.close_code == 1008
        errors = [m for m in received if m["type"] == "error"]
        assert errors and "mode=file" in errors[0]["message"]
        # Refused once about 3 s ahead (after ~1 s of sending), not cut off after most of the minute ...
        assert sent / 32000 < 15
        # ... and what it sent before was captioned, for the room too.
        said = [f["text"] for f in finals(received)]
        assert said and said[:-1] == texts[: len(said) - 1] and texts[len(said) - 1].startswith(said[-1])  # the last one as far as it was sent
        shown: list[str] = []
        with contextlib.suppress(TimeoutError):
            while len(shown) < len(said):
                message = json.loads(viewer.recv(timeout=10))
                if message["type"] == "final":
                    shown.append(message["text"])
        assert shown == said


@pytest.mark.slow  # seconds of a slowed decoder
def test_a_fast_recording_whose_connection_drops_stops_costing_and_resumes(tmp_path: Path) -> None:
    texts = [script(6, start=i) for i in range(18)]
    audio = speak(*texts)
    with running(tmp_path, decode_delay_s=0.1, file_backlog_s=3.0) as server:
        with connect(f"{server.url}/v1/publish?room=r&mode=file") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            for offset in range(0, len(audio) // 2, 1600):
                ws.send(pcm16(audio[offset : offset + 1600]))
            ws.socket.shutdown(socket.SHUT_RDWR)  # dropped mid-recording, with plenty still unread
        # What the server had read (at most the backlog bound) is captioned, and nothing more is decoded.
        wait_for(lambda: metric(server, "flashcaption_sessions_resumable") == 1, timeout=20)
        decodes = metric(server, "flashcaption_decodes_total")
        time.sleep(1.0)
        assert metric(server, "flashcaption_decodes_total") == decodes
        messages, code = publish(server.url, np.zeros(16000, np.float32), f"resume={session}&room=r")
        assert code == 1000 and messages[0]["type"] == "ready" and messages[0]["session"] == session


def test_a_client_that_answers_no_ping_is_closed(tmp_path: Path) -> None:
    with running(tmp_path, keepalive_s=0.3) as server, socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(_upgrade("/v1/captions?room=r"))  # and never answers the pings that follow
        raw.settimeout(20)
        received = b""
        while chunk := raw.recv(4096):
            received += chunk
        assert b"keepalive ping timeout" in received  # the close frame's reason
        wait_for(lambda: health(server)["viewers"] == 0)


# -- 6: parked sessions hold no publisher slot ---------------------------------------------------
def test_dropped_connections_cannot_lock_publishers_out(tmp_path: Path) -> None:
    with running(tmp_path, max_publishers_per_room=2, max_parked_per_address=3) as server:
        for _ in range(6):
            with connect(f"{server.url}/v1/publish?room=r") as ws:
                answer = json.loads(ws.recv(timeout=10))
                assert answer["type"] == "ready", answer  # not "room r has the most publishers allowed"
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


@pytest.mark.slow  # a history of 100,000 finals
def test_viewers_that_never_read_hold_a_bounded_amount_and_are_closed(tmp_path: Path) -> None:
    seed(tmp_path, "big", 100_000)
    with running(tmp_path, send_stall_s=3.0) as server:
        before = _rss_mb()
        stuck = []
        for _ in range(8):
            raw = socket.create_connection(("127.0.0.1", server.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read from it
            raw.sendall(_upgrade("/v1/captions?room=big&since=0"))
            stuck.append(raw)
        wait_for(lambda: health(server)["viewers"] == 8)
        time.sleep(1.5)  # each has filled its socket and its page
        held = _rss_mb() - before
        print(f"8 viewers of 100,000 finals that never read: {held:.1f} MB held by the server")
        assert held < 64  # 818 MB before backlogs were paged
        # ... and they are closed once their sockets have taken nothing for send_stall_s.
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
@pytest.mark.slow  # a history of 100,000 finals
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
        # The hole was the loop blocked for seconds (4.06 s). Here the server shares one process,
        # and so one GIL, with this test's own threads and the export's: /healthz takes ~70 ms
        # (the same before and after this bound was set), so the bound leaves room for a busy CI.
        assert len(timings) >= 5 and statistics.median(timings) < 0.25 and max(timings) < 1.0


def test_exports_at_once_are_bounded(tmp_path: Path) -> None:
    seed(tmp_path, "big", 20_000)
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
@pytest.mark.slow  # seconds of real waiting: in the full suite
@pytest.mark.parametrize("history", [50, 20_000])
def test_a_burst_of_viewers_cannot_overshoot_the_room_limit(tmp_path: Path, history: int) -> None:
    seed(tmp_path, "crowd", history)  # with since=, a join reads the journal: the old check raced it
    with running(tmp_path, max_viewers_per_room=5) as server:
        answers: list[str] = []
        lock = threading.Lock()
        together = threading.Barrier(20)
        answered = threading.Event()

        def join() -> None:
            together.wait()  # all at once: the check and the count must be one step
            with connect(f"{server.url}/v1/captions?room=crowd&since=0", open_timeout=30, close_timeout=1) as ws:
                message = json.loads(ws.recv(timeout=30))
                with lock:
                    answers.append(message["type"] if message["type"] == "ready" else message["code"])
                    if len(answers) == 20:
                        answered.set()
                answered.wait(60)  # each viewer that got in stays until all have their answer

        threads = [threading.Thread(target=join) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert answers.count("ready") == 5 and answers.count("overloaded") == 15, answers


# -- 5 and 11: behind a reverse proxy --------------------------------------------------------------
def test_the_client_address_is_believed_only_from_trusted_proxies() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("198.51.100.7", {"X-Forwarded-For": "203.0.113.9"}, trusted) == "198.51.100.7"  # not a proxy: ignored
    assert client_address("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, trusted) == "203.0.113.9"
    # The nearest hop that is not one of our proxies; what the client wrote before it is not believed.
    assert client_address("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 203.0.113.9, 10.1.1.1"}, trusted) == "203.0.113.9"
    assert client_address("10.0.0.5", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, trusted) == "2001:db8::1"
    assert client_address("10.0.0.5", {"Forwarded": "for=192.0.2.60:8080, for=10.0.0.9"}, trusted) == "192.0.2.60"
    assert client_address("127.0.0.1", {}, trusted) == "127.0.0.1"
    with pytest.raises(ValueError, match="trusted-proxy"):
        parse_networks(["not-an-address"])


def test_behind_a_trusted_proxy_limits_count_each_client(tmp_path: Path) -> None:
    with running(tmp_path, auth="off", trusted_proxies=("127.0.0.1",), max_viewers_per_ip=2, max_publishers_per_ip=1) as server:
        def viewer(address: str) -> Any:
            return connect(f"{server.url}/v1/captions?room=hall", additional_headers={"X-Forwarded-For": address})

        with viewer("203.0.113.1") as a, viewer("203.0.113.1") as b, viewer("203.0.113.2") as c:
            for ws in (a, b, c):
                assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            with viewer("203.0.113.1") as third:
                message = json.loads(third.recv(timeout=10))
                assert message["code"] == "overloaded" and "viewers from your address" in message["message"]
            # Viewers and publishers are counted apart: a full hall does not lock its speaker out.
            with connect(f"{server.url}/v1/publish?room=hall", additional_headers={"X-Forwarded-For": "203.0.113.1"}) as speaker:
                assert json.loads(speaker.recv(timeout=10))["type"] == "ready"


def test_auto_on_loopback_is_not_open_to_what_a_proxy_forwards(tmp_path: Path) -> None:
    with running(tmp_path, auth="auto") as server:  # loopback: open to this machine ...
        assert http(server, "/v1/rooms/r/transcript")[0] == 200
        # ... but deleting a room takes an admin token even from here (a proxy that forwards
        # without saying so would otherwise let anyone erase rooms).
        assert http(server, "/v1/rooms/r", "DELETE")[0] == 401
        assert http(server, "/v1/rooms/r", "DELETE", token=auth.create_token(auth.load_secret(tmp_path), "r", "view", 60))[0] == 401
        assert http(server, "/v1/rooms/r", "DELETE", token=admin(tmp_path))[0] == 200
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/rooms/r", method="DELETE")
        request.add_header("X-Forwarded-For", "203.0.113.9")
        with pytest.raises(urllib.error.HTTPError) as refused_delete:
            urllib.request.urlopen(request, timeout=10)
        assert refused_delete.value.code == 401
        refused_delete.value.close()
        with connect(f"{server.url}/v1/publish?room=r", additional_headers={"Forwarded": "for=203.0.113.9"}, close_timeout=1) as ws:
            assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"
        token = auth.create_token(auth.load_secret(tmp_path), "r", "publish", 60)
        with connect(f"{server.url}/v1/publish?room=r&token={token}", additional_headers={"Forwarded": "for=203.0.113.9"}, close_timeout=1) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"


# -- 13: out of file descriptors -------------------------------------------------------------------
SERVE_WITH_FEW_FILES = """
import asyncio, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
sys.path.insert(0, {root!r})
from streaming.config import ServerConfig
from streaming.logs import setup_logging
from streaming.server import CaptionServer
from tests.scripted import ScriptedModel

async def main():
    setup_logging()
    server = CaptionServer(ServerConfig(port=0, data_dir=Path({data!r})), ScriptedModel())
    port = await server.start()
    print(port, server.connection_cap, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow  # seconds of real waiting: in the full suite
def test_running_out_of_file_descriptors_refuses_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    script = SERVE_WITH_FEW_FILES.format(root=root, data=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
    sockets: list[socket.socket] = []
    try:
        assert child.stdout is not None
        port, cap = map(int, child.stdout.readline().split())
        assert cap == 200 - 128
        for _ in range(250):  # past the cap, and past what the process could open
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            raw.sendall(_upgrade("/v1/captions?room=r"))
            sockets.append(raw)
            time.sleep(0.01)  # a crowd arriving, not one burst
        answers = [raw.recv(200).split(b"\r\n")[0] for raw in sockets]
        assert answers.count(b"HTTP/1.1 101 Switching Protocols") >= cap - 8  # a few files go to the server itself
        assert b"HTTP/1.1 503 Service Unavailable" in answers
        for raw in sockets:
            raw.close()
        sockets.clear()
        time.sleep(1.0)
        # Still serving once the crowd has gone.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        for raw in sockets:
            raw.close()
        child.terminate()
        _, errors = child.communicate(timeout=30)
    assert errors.count("Traceback") <= 5, errors[-3000:]


# -- 10: tables that only resumes use do not grow for ever ------------------------------------------
@pytest.mark.slow  # seconds of real waiting: in the full suite
def test_many_short_sessions_leave_nothing_behind_but_their_finals(tmp_path: Path) -> None:
    with running(tmp_path, resume_grace_s=0.3, forget_sessions_every_s=0.5) as server:
        for index in range(40):
            if index % 2:
                messages, code = publish(server.url, speak("alpha"), "room=many")
                assert code == 1000 and finals(messages)
            else:
                with connect(f"{server.url}/v1/publish?room=many") as ws:
                    json.loads(ws.recv(timeout=10))
                    ws.socket.shutdown(socket.SHUT_RDWR)  # dropped: parked, then expired

        def rows(table: str) -> int:
            with contextlib.closing(sqlite3.connect(tmp_path / "journal.sqlite3")) as db:
                return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

        wait_for(lambda: rows("ended_sessions") == 0 and rows("sessions") == 0, timeout=15)
        assert rows("finals") == 20  # the transcript itself is kept (--retain-days says how long)


# -- 5: browser pages of other sites are not let in unless the operator says so ----------------------
def test_browser_pages_from_other_origins_are_refused_by_default(tmp_path: Path) -> None:
    from websockets.exceptions import InvalidStatus

    with running(tmp_path) as server:
        own = f"http://127.0.0.1:{server.port}"
        with connect(f"{server.url}/v1/captions?room=o", origin=own) as viewer:  # a page of this server
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        with connect(f"{server.url}/v1/captions?room=o") as viewer:  # not a browser: no Origin
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        with pytest.raises(InvalidStatus) as refused_page:
            with connect(f"{server.url}/v1/captions?room=o", origin="https://evil.example.com"):
                pass
        assert refused_page.value.response.status_code == 403
    with running(tmp_path, allow_origins=("*",)) as server:
        with connect(f"{server.url}/v1/captions?room=o", origin="https://evil.example.com") as viewer:
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"


def test_an_error_about_a_long_non_ascii_value_still_closes_cleanly(scripted_server: ServerThread) -> None:
    """Found by the fuzz test: a close reason is at most 123 bytes, and an error that quoted
    a parameter of many multibyte characters overflowed it (1011 instead of the error's 1008)."""
    message, code = refused(scripted_server.url, "/v1/publish?encoding=" + quote("\U000118c7" * 40))
    assert code == 1008 and message["code"] == "bad_request" and "encoding" in message["message"]


def test_a_deeply_nested_message_is_an_error_not_a_crash(scripted_server: ServerThread) -> None:
    """Found by the fuzz test: 2,048 opening brackets raised RecursionError in the JSON parser
    (1011); it is a bad message like any other, and the stream goes on."""
    with connect(f"{scripted_server.url}/v1/publish?room=nested&mode=file") as ws:
        json.loads(ws.recv(timeout=10))
        ws.send("[" * 2048)
        message = json.loads(ws.recv(timeout=10))
        assert message["code"] == "bad_request" and "nested" in message["message"]
        audio = speak("alpha")
        for offset in range(0, len(audio), 1600):
            ws.send(pcm16(audio[offset : offset + 1600]))
        ws.send(json.dumps({"type": "end"}))
        assert [f["text"] for f in finals(receive_all(ws))] == ["alpha"]
