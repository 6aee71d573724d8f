"""The server on a loopback port, through real websockets clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.events import Final
from streaming.journal import Journal
from streaming.rooms import Rooms, Viewer
from streaming.scoring import error_rate
from tests.conftest import CLIPS, ServerThread

SR = 16000


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def receive_all(ws, timeout: float = 60) -> list[dict]:
    """Every message until the server closes the connection."""
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
    except ConnectionClosed:
        pass
    return messages


def receive_until(ws, predicate, timeout: float = 60) -> list[dict]:
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        messages.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        if predicate(messages[-1]):
            return messages


def publish(url: str, audio: np.ndarray, query: str = "", pace: float = 0.0, chunk: int = 1600) -> tuple[list[dict], int]:
    """Stream audio (then 1 s of silence) and ``end``; return every message and the close code."""
    audio = np.concatenate([audio, np.zeros(SR, np.float32)])
    if not pace:
        query += "&mode=file"  # faster than real time
    with connect(f"{url}/v1/publish?{query}") as ws:
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready"
        for offset in range(0, len(audio), chunk):
            ws.send(pcm16(audio[offset : offset + chunk]))
            if pace:
                time.sleep(pace)
        ws.send(json.dumps({"type": "end"}))
        messages = [ready] + receive_all(ws)
    return messages, ws.close_code


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "final"]


def test_publish_with_two_viewers_and_a_late_viewer(server):
    clip = CLIPS["en_jfk_inaugural"]
    with contextlib.ExitStack() as stack:
        viewers = [stack.enter_context(connect(f"{server.url}/v1/captions?room=hall")) for _ in range(2)]
        check_publish_and_viewers(server, clip, viewers)


def check_publish_and_viewers(server, clip, viewers) -> None:
    for viewer in viewers:
        ready = json.loads(viewer.recv(timeout=10))
        assert ready["type"] == "ready" and ready["room"] == "hall"
    messages, code = publish(server.url, clip.audio, "room=hall&speaker=JFK", pace=0.02)
    assert code == 1000
    ready, events = messages[0], messages[1:]
    assert ready["model"] == "moonshine-base-en" and ready["sample_rate"] == 16000 and ready["language"] == "en"
    published = finals(events)
    assert [m["type"] for m in events].count("partial") >= 3
    assert [f["seq"] for f in published] == list(range(1, len(published) + 1))
    assert [f["segment"] for f in published] == list(range(len(published)))
    for event in events:
        assert event["room"] == "hall" and event["speaker"] == "JFK" and event["session"] == ready["session"]
        assert 0 <= event["start"] <= event["end"] <= len(clip.audio) / SR + 1.0
    assert error_rate([(clip.reference, " ".join(f["text"] for f in published))]) < 0.1

    for viewer in viewers:
        seen = receive_until(viewer, lambda m: m["type"] == "final" and m["seq"] == published[-1]["seq"])
        assert finals(seen) == published  # every viewer sees exactly what the publisher saw
        assert [m for m in seen if m["type"] == "partial"] == [m for m in events if m["type"] == "partial"]

    with connect(f"{server.url}/v1/captions?room=hall&since=1") as late:
        assert json.loads(late.recv(timeout=10))["type"] == "ready"
        replay = [json.loads(late.recv(timeout=10)) for _ in published[1:]]
        assert replay == published[1:]
        with pytest.raises(TimeoutError):
            late.recv(timeout=0.5)  # nothing more: each final once


def test_rooms_are_separate(server):
    with connect(f"{server.url}/v1/captions?room=other&since=0") as viewer:
        json.loads(viewer.recv(timeout=10))
        publish(server.url, CLIPS["en_arctic_a0024"].audio, "room=elsewhere")
        with pytest.raises(TimeoutError):
            viewer.recv(timeout=1.0)


def refused(url: str, path: str) -> tuple[dict, int]:
    with connect(url + path) as ws:
        message = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    return message, ws.close_code


@pytest.mark.parametrize(
    "path, text",
    [
        ("/v1/publish?room=bad%20room", "room"),
        ("/v1/publish?sample_rate=96000", "sample_rate"),
        ("/v1/publish?language=fr", "does not support language 'fr'"),
        ("/v1/publish?encoding=opus", "encoding"),
        ("/v1/captions?since=x", "since"),
    ],
)
def test_bad_connection_parameters_are_refused(server, path, text):
    message, code = refused(server.url, path)
    assert message["type"] == "error" and message["code"] == "bad_request" and text in message["message"]
    assert code == 1008


def test_mistakes_mid_stream_are_reported_and_the_stream_goes_on(server):
    clip = CLIPS["en_arctic_a0024"]
    with connect(f"{server.url}/v1/publish?room=mistakes") as ws:
        json.loads(ws.recv(timeout=10))
        errors = []
        for bad in ('{"type":"dance"}', "{oops", '{"type":"config","language":"English"}', '{"type":"config","language":"fr"}'):
            ws.send(bad)
            errors.append(json.loads(ws.recv(timeout=10)))
        ws.send(b"\x01\x02\x03")  # half a sample
        errors.append(json.loads(ws.recv(timeout=10)))
        assert [e["type"] for e in errors] == ["error"] * 5
        assert all(e["code"] == "bad_request" for e in errors)
        assert "dance" in errors[0]["message"] and "JSON" in errors[1]["message"]
        assert "does not support language 'fr'" in errors[3]["message"] and "whole number" in errors[4]["message"]
        audio = np.concatenate([clip.audio, np.zeros(SR, np.float32)])
        for offset in range(0, len(audio), 3200):
            ws.send(pcm16(audio[offset : offset + 3200]))
        ws.send('{"type":"end"}')
        messages = receive_all(ws)
    assert ws.close_code == 1000
    assert "north" in " ".join(f["text"] for f in finals(messages))


def test_oversized_audio_frame_is_too_large(server):
    with connect(f"{server.url}/v1/publish") as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(bytes(2 * SR * 2))  # two seconds in one frame
        message = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert message["code"] == "too_large" and ws.close_code == 1009


def test_huge_message_is_cut_off_by_the_transport(server):
    with connect(f"{server.url}/v1/publish", max_size=None) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(bytes(5 * 1024 * 1024))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    assert ws.close_code == 1009


def test_flush_finalises_now(server):
    clip = CLIPS["en_jfk_inaugural"]
    with connect(f"{server.url}/v1/publish?room=flush") as ws:
        json.loads(ws.recv(timeout=10))
        for offset in range(0, 2 * SR, 1600):  # "And so my fellow Americans", no pause yet
            ws.send(pcm16(clip.audio[offset : offset + 1600]))
        ws.send('{"type":"flush"}')
        final = receive_until(ws, lambda m: m["type"] == "final", timeout=30)[-1]
        assert "fellow" in final["text"].lower() and final["segment"] == 0


def test_a_dropped_publisher_still_gets_its_final_to_viewers(server):
    clip = CLIPS["en_ls_1995-1837-0001"]
    with connect(f"{server.url}/v1/captions?room=dropped") as viewer:
        json.loads(viewer.recv(timeout=10))
        with connect(f"{server.url}/v1/publish?room=dropped") as ws:
            json.loads(ws.recv(timeout=10))
            for offset in range(0, 6 * SR, 1600):  # mid-sentence
                ws.send(pcm16(clip.audio[offset : offset + 1600]))
            ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the network just went away
        seen = receive_until(viewer, lambda m: m["type"] == "final" and "cotton" in m["text"], timeout=60)
        assert finals(seen)


def test_http_routes(server):
    base = server.url.replace("ws://", "http://")
    health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())
    assert health["status"] == "ok" and health["model"] == "moonshine-base-en" and health["device"] == "cpu"
    page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
    assert "FlashCaption" in page
    for path, status in (("/nope", 404), ("/v1/publish", 426)):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(base + path, timeout=10)
        assert error.value.code == status


def test_overloaded_server_refuses_new_publishers(model, tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer

    full = ServerThread(CaptionServer(ServerConfig(port=0, max_queued_decodes=0, data_dir=tmp_path), model)).start()
    try:
        message, code = refused(full.url, "/v1/publish")
        assert message["code"] == "overloaded" and code == 1013
    finally:
        full.stop()


def test_a_slow_viewer_is_dropped_and_the_room_goes_on(tmp_path):
    async def scenario():
        rooms = Rooms(Journal(tmp_path / "j.sqlite3"))
        room = await rooms.get("r")
        slow, fast = Viewer(max_events=3), Viewer(max_events=100)
        dropped = []
        slow.on_drop = lambda: dropped.append(True)
        room.viewers |= {slow, fast}
        for i in range(10):
            await rooms.publish_final(room, _final("r", str(i)), 0.0, 1.0)
        assert dropped == [True] and slow not in room.viewers and fast in room.viewers
        assert [json.loads(await fast.next())["seq"] for _ in range(10)] == list(range(1, 11))
        rooms.close()

    asyncio.run(scenario())


_segments = itertools.count()


def _final(room: str, text: str) -> Final:
    # Each its own segment: the store keeps a final appended twice (same session and segment) once.
    return Final(room=room, session="s", speaker="", segment=next(_segments), text=text, start=0.0, end=1.0, language="en")


def test_rooms_are_bounded_and_occupied_rooms_are_never_forgotten(tmp_path):
    async def scenario():
        rooms = Rooms(Journal(tmp_path / "j.sqlite3"), max_rooms=3)
        (await rooms.get("busy")).publishers = 1
        for name in ("a", "b", "c", "d"):
            await rooms.publish_final(await rooms.get(name), _final(name, name), 0.0, 1.0)
        names = {room.name for room in rooms}
        assert "busy" in names and len(names) == 3 and names == {"busy", "c", "d"}
        # A forgotten room's finals are still in the journal, and its seq continues.
        again = await rooms.get("a")
        assert again.next_seq == 2
        rooms.close()

    asyncio.run(scenario())


def test_a_dropped_publisher_resumes_its_session(server):
    clip = CLIPS["en_ls_1995-1837-0001"].audio
    with connect(f"{server.url}/v1/captions?room=resume") as viewer:
        json.loads(viewer.recv(timeout=10))
        with connect(f"{server.url}/v1/publish?room=resume&speaker=Ada") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            for offset in range(0, 4 * SR, 1600):  # "It was the first great sorrow of his life. It was not so"
                ws.send(pcm16(clip[offset : offset + 1600]))
            ws.socket.shutdown(socket.SHUT_RDWR)  # the network goes away mid-utterance
        before = finals(receive_until(viewer, lambda m: m["type"] == "final" and "not" in m["text"], timeout=60))
        # ... and comes back: the same session goes on.
        rest = clip[4 * SR :]
        messages, code = publish(server.url, rest, f"resume={session}&room=resume")
        assert code == 1000 and messages[0]["session"] == session
        after = finals(messages)
        assert after and all(f["speaker"] == "Ada" and f["session"] == session for f in after)
        assert [f["segment"] for f in before + after] == list(range(len(before) + len(after)))
        assert "cotton" in " ".join(f["text"] for f in after)
    # Once ended, the session cannot be resumed again.
    message, code = refused(server.url, f"/v1/publish?resume={session}")
    assert message["code"] == "bad_request" and "no session" in message["message"] and code == 1008
    message, _ = refused(server.url, "/v1/publish?resume=0123456789ab")
    assert "no session" in message["message"]


def test_a_session_cannot_be_resumed_after_its_grace_period(model, tmp_path):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer

    quick = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, resume_grace_s=0.5), model)).start()
    try:
        with connect(f"{quick.url}/v1/publish?room=g") as ws:
            session = json.loads(ws.recv(timeout=10))["session"]
            ws.send(pcm16(CLIPS["en_arctic_a0024"].audio[:SR]))
            ws.socket.shutdown(socket.SHUT_RDWR)
        time.sleep(2.0)
        message, code = refused(quick.url, f"/v1/publish?resume={session}")
        assert "no session" in message["message"] and code == 1008
    finally:
        quick.stop()
