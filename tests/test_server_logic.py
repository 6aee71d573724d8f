"""The real server on a loopback port with the scripted model (tests/scripted.py): every viewer
of a room gets every final exactly once, in seq order, live or resumed with ``since``; rooms
share nothing; a dropped publisher's final still reaches the room. Real websockets clients."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServerThread
from tests.scripted import speak
from tests.test_server import finals, pcm16, publish, receive_until

TEXTS = ("alpha bravo charlie", "delta echo foxtrot golf", "hotel india", "juliett kilo lima mike november")
_rooms = itertools.count()


def new_room() -> str:
    """A room no other test uses (the server lives for the whole module)."""
    return f"logic-{next(_rooms)}"


@contextlib.contextmanager
def watch(url: str, room: str, since: int | None = None) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    """A viewer of ``room``, past its ``ready``."""
    with connect(f"{url}/v1/captions?room={room}" + (f"&since={since}" if since is not None else "")) as viewer:
        ready = json.loads(viewer.recv(timeout=10))
        assert ready["type"] == "ready"
        yield viewer, ready


def send_audio(publisher: ClientConnection, audio: np.ndarray) -> None:
    """In frames of 0.1 s (a frame may hold at most 1 s)."""
    for offset in range(0, len(audio), 1600):
        publisher.send(pcm16(audio[offset : offset + 1600]))


def finals_until(viewer: ClientConnection, seq: int) -> list[dict[str, Any]]:
    """The finals a viewer gets up to ``seq``; then checks that no other final follows."""
    seen = finals(receive_until(viewer, lambda m: m["type"] == "final" and m["seq"] >= seq, timeout=30))
    nothing_more(viewer)
    return seen


def nothing_more(viewer: ClientConnection, wait: float = 0.2) -> None:
    try:
        while True:
            message = json.loads(viewer.recv(timeout=wait))
            assert message["type"] != "final", f"a final more than once or out of turn: {message}"
    except TimeoutError:
        pass


def test_every_viewer_gets_every_final_once_in_seq_order(scripted_server: ServerThread) -> None:
    url, room = scripted_server.url, new_room()
    with contextlib.ExitStack() as stack:
        live = [stack.enter_context(watch(url, room))[0] for _ in range(2)]
        from_start, ready = stack.enter_context(watch(url, room, since=0))
        assert ready["seq"] == 0
        messages, code = publish(url, speak(*TEXTS), f"room={room}&speaker=Ada")
        assert code == 1000
        published = finals(messages)
        assert [f["text"] for f in published] == list(TEXTS)  # one final per utterance, with its words
        assert [f["seq"] for f in published] == list(range(1, len(TEXTS) + 1))
        assert [f["segment"] for f in published] == list(range(len(TEXTS)))
        partials = [m for m in messages if m["type"] == "partial"]
        for viewer in [*live, from_start]:
            seen = receive_until(viewer, lambda m: m["type"] == "final" and m["seq"] == len(TEXTS), timeout=30)
            assert finals(seen) == published  # exactly what the publisher got, once each, in order
            assert [m for m in seen if m["type"] == "partial"] == partials
            nothing_more(viewer)
    # Later viewers: since=N replays the finals after N from the journal, and only those.
    for since in (0, 1, len(TEXTS) - 1, len(TEXTS)):
        with watch(url, room, since=since) as (late, ready):
            assert ready["seq"] == len(TEXTS)
            replay = [json.loads(late.recv(timeout=10)) for _ in published[since:]]
            assert replay == published[since:]
            nothing_more(late)


def test_two_publishers_in_a_room_share_its_seq_and_every_viewer_gets_both(scripted_server: ServerThread) -> None:
    url, room = scripted_server.url, new_room()
    said = {"Ada": TEXTS[:2], "Grace": TEXTS[2:]}
    got: dict[str, list[dict[str, Any]]] = {}

    def speaker(name: str) -> None:
        got[name] = finals(publish(url, speak(*said[name]), f"room={room}&speaker={name}", pace=0.005)[0])

    with watch(url, room) as (viewer, _):
        threads = [threading.Thread(target=speaker, args=(name,)) for name in said]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for name, texts in said.items():
            assert [f["text"] for f in got[name]] == list(texts) and {f["speaker"] for f in got[name]} == {name}
        every = sorted(got["Ada"] + got["Grace"], key=lambda f: f["seq"])
        assert [f["seq"] for f in every] == list(range(1, len(TEXTS) + 1))  # shared, no gap, no repeat
        assert finals_until(viewer, len(TEXTS)) == every


def test_a_viewer_that_reconnects_with_since_loses_and_repeats_nothing(scripted_server: ServerThread) -> None:
    url, room = scripted_server.url, new_room()
    audio = speak(*TEXTS)
    first_pause = int((0.5 + 1.2 + 0.9) * 16000)  # just after the first utterance's final
    with connect(f"{url}/v1/publish?room={room}&mode=file") as publisher:
        json.loads(publisher.recv(timeout=10))
        with watch(url, room) as (viewer, _):
            send_audio(publisher, audio[:first_pause])
            (first,) = finals(receive_until(viewer, lambda m: m["type"] == "final", timeout=30))
        assert first["text"] == TEXTS[0]
        # Away while the rest is said; back with the last seq it showed.
        send_audio(publisher, audio[first_pause:])
        publisher.send('{"type":"end"}')
        with watch(url, room, since=first["seq"]) as (back, _):
            rest = finals_until(back, len(TEXTS))
    assert [f["text"] for f in [first, *rest]] == list(TEXTS)
    assert [f["seq"] for f in [first, *rest]] == list(range(1, len(TEXTS) + 1))


def test_rooms_share_nothing(scripted_server: ServerThread) -> None:
    url, here, there = scripted_server.url, new_room(), new_room()
    with watch(url, here, since=0) as (viewer, _):
        messages, _ = publish(url, speak(TEXTS[0]), f"room={there}")
        assert [f["text"] for f in finals(messages)] == [TEXTS[0]] and finals(messages)[0]["seq"] == 1
        with pytest.raises(TimeoutError):
            viewer.recv(timeout=0.5)


def test_flush_over_the_wire_finalises_now(scripted_server: ServerThread) -> None:
    url, room = scripted_server.url, new_room()
    audio = speak("alpha bravo charlie delta")
    with connect(f"{url}/v1/publish?room={room}&mode=file") as publisher:
        json.loads(publisher.recv(timeout=10))
        send_audio(publisher, audio[: int(1.65 * 16000)])  # three words, no pause yet
        publisher.send('{"type":"flush"}')
        final = receive_until(publisher, lambda m: m["type"] == "final", timeout=30)[-1]
    assert final["text"] == "alpha bravo charlie" and final["segment"] == 0


def test_a_dropped_publisher_still_gets_its_final_to_viewers(scripted_server: ServerThread) -> None:
    url, room = scripted_server.url, new_room()
    audio = speak("alpha bravo charlie delta")
    with watch(url, room) as (viewer, _):
        with connect(f"{url}/v1/publish?room={room}&mode=file") as publisher:
            json.loads(publisher.recv(timeout=10))
            send_audio(publisher, audio[: int(1.65 * 16000)])  # mid-utterance
            publisher.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the network went away
        (final,) = finals(receive_until(viewer, lambda m: m["type"] == "final", timeout=30))
    assert final["text"] == "alpha bravo charlie" and final["seq"] == 1


def test_a_final_does_not_wait_for_its_stream_s_partial(tmp_path) -> None:
    """A partial still being decoded when the speaker pauses is withdrawn, and the early final
    asked for at once: with a model this slow (2 s an encode), waiting for the partial would
    be most of the final's latency."""
    import time
    import urllib.request

    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.scripted import ScriptedModel, silence

    def withdrawn(url: str) -> float:
        text = urllib.request.urlopen(url.replace("ws://", "http://") + "/metrics", timeout=10).read().decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("flashcaption_decodes_withdrawn_total ")))

    model = ScriptedModel(compute_s=2.0)
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), model)).start()
    try:
        room, audio = new_room(), np.concatenate([speak("alpha bravo charlie delta"), silence(1.0)])
        with watch(running.url, room) as (viewer, _):
            with connect(f"{running.url}/v1/publish?room={room}&mode=live") as publisher:
                json.loads(publisher.recv(timeout=10))
                for offset in range(0, len(audio), 1600):  # in real time: the partial is still running at the pause
                    publisher.send(pcm16(audio[offset : offset + 1600]))
                    time.sleep(0.1)
                (final,) = finals(receive_until(viewer, lambda m: m["type"] == "final", timeout=30))
        assert final["text"] == "alpha bravo charlie delta"
        assert withdrawn(running.url) >= 1
    finally:
        running.stop()
