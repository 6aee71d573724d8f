"""Many nodes, one room: two or three FlashCaption nodes sharing a real redis-server. Finals and
their seqs are the same on every node, a publisher resumes on another node, Redis killed -9 and
restarted (AOF) or down for 10 s loses and repeats no final, and a busy node sends a new
publisher to another. The scripted model stands in for the speech model (the store is what is
tested); tests/test_store.py runs the store itself against both stores."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from streaming.config import ServerConfig
from streaming.evaluation.redis_server import RedisServer
from streaming.server import CaptionServer
from tests.conftest import ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_server import finals, pcm16, publish, receive_until
from tests.test_web import browser, context, playwright, run_async  # noqa: F401  (fixtures)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def node(tmp_path, redis_server: RedisServer, name: str, model: ScriptedModel | None = None, **config) -> ServerThread:
    settings = ServerConfig(port=0, data_dir=tmp_path / name, store=redis_server.url, node=name, **config)
    return ServerThread(CaptionServer(settings, model or ScriptedModel())).start()


@contextlib.contextmanager
def nodes(tmp_path, redis_server: RedisServer, *names: str, **config):
    running = [node(tmp_path, redis_server, name, **config) for name in names]
    try:
        yield running
    finally:
        for server in running:
            server.stop()


def watch(url: str, room: str, since: int | None = None):
    viewer = connect(f"{url}/v1/captions?room={room}" + (f"&since={since}" if since is not None else ""))
    assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
    return viewer


def finals_until(viewer, count: int, timeout: float = 30) -> list[dict]:
    got: list[dict] = []
    receive_until(viewer, lambda m: (got.append(m) if m["type"] == "final" else None) or len(got) >= count, timeout)
    return got


def test_a_room_spans_nodes_with_the_same_finals_in_the_same_order(tmp_path, redis_server):
    with nodes(tmp_path, redis_server, "a", "b", "c", auth="off") as (a, b, c):
        viewers = [watch(server.url, "hall") for server in (a, b, c)]
        partials_on_b: list[dict] = []
        messages, code = publish(a.url, speak("alpha bravo", "charlie", "delta echo foxtrot"), "room=hall")
        sent = [(f["seq"], f["text"]) for f in finals(messages)]
        assert code == 1000 and [s for s, _ in sent] == [1, 2, 3]
        for viewer in viewers:
            got = finals_until(viewer, 3)
            assert [(f["seq"], f["text"]) for f in got] == sent
        # A second publisher on another node: numbered after, seen everywhere.
        messages, _ = publish(c.url, speak("golf"), "room=hall")
        assert [(f["seq"], f["text"]) for f in finals(messages)] == [(4, "golf")]
        for viewer in viewers:
            assert [(f["seq"], f["text"]) for f in finals_until(viewer, 1)] == [(4, "golf")]
        # Partials travel too (live, over pub/sub), paced so that there are some.
        publisher = threading.Thread(target=publish, args=(a.url, speak("hotel india juliett kilo lima"), "room=hall", 0.05))
        publisher.start()
        receive_until(viewers[1], lambda m: partials_on_b.append(m) or m["type"] == "final", 30)
        publisher.join(30)
        assert any(m["type"] == "partial" for m in partials_on_b)
        for viewer in viewers:
            viewer.close()
        # A late viewer on any node gets the whole room from the store.
        with watch(b.url, "hall", since=0) as late:
            assert [f["seq"] for f in finals_until(late, 5)] == [1, 2, 3, 4, 5]
        with urllib.request.urlopen(f"{c.url.replace('ws', 'http')}/v1/rooms/hall/transcript?format=json") as reply:
            assert [r["seq"] for r in json.load(reply)["finals"]] == [1, 2, 3, 4, 5]
        # A room someone is in on another node is not deleted from this one.
        with watch(b.url, "hall"):
            time.sleep(2.5)  # b says which rooms it has people in (nodes.EVERY_S)
            request = urllib.request.Request(f"{a.url.replace('ws', 'http')}/v1/rooms/hall", method="DELETE")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request)
            assert refused.value.code == 409 and b"node b" in refused.value.read()
            refused.value.close()


def test_a_publisher_that_drops_resumes_on_another_node(tmp_path, redis_server):
    with nodes(tmp_path, redis_server, "a", "b") as (a, b):
        with watch(b.url, "hall") as viewer:
            with connect(f"{a.url}/v1/publish?room=hall&mode=file&speaker=Ada") as ws:
                ready = two_finals(ws)
                for chunk in chunks(speak("echo foxtrot")):  # its final not yet made when it drops
                    ws.send(chunk)
            # The client comes back on node b: the same session goes on there.
            messages, code = publish(b.url, speak("golf hotel"), f"room=hall&resume={ready['session']}")
            assert code == 1000
            assert messages[0]["type"] == "ready" and messages[0]["session"] == ready["session"]
            got = finals_until(viewer, 4)
        texts = [f["text"] for f in got]
        assert [f["seq"] for f in got] == [1, 2, 3, 4] and texts == ["alpha bravo", "charlie delta", "echo foxtrot", "golf hotel"]
        assert all(f["session"] == ready["session"] and f["speaker"] == "Ada" for f in got)
        assert [f["segment"] for f in got] == sorted({f["segment"] for f in got})  # segments go on, none twice


def test_a_publisher_still_connected_to_one_node_is_taken_over_by_a_resume_on_another(tmp_path, redis_server):
    """The client reconnected to b while a has not seen its old connection drop (half-open):
    a is asked to let go, closes the old connection as a take-over does (4000), captions what it
    heard and parks the session; b then goes on from a's last final."""
    from websockets.exceptions import ConnectionClosed

    with nodes(tmp_path, redis_server, "a", "b") as (a, b):
        with watch(b.url, "hall") as viewer:
            with connect(f"{a.url}/v1/publish?room=hall&mode=file") as old:
                ready = two_finals(old)
                messages, code = publish(b.url, speak("echo foxtrot"), f"room=hall&resume={ready['session']}")
                with pytest.raises(ConnectionClosed):
                    while True:
                        old.recv(timeout=10)
                assert old.close_code == 4000
            got = finals_until(viewer, 3)
        assert code == 1000 and messages[0]["session"] == ready["session"]
        assert [(f["seq"], f["text"]) for f in got] == [(1, "alpha bravo"), (2, "charlie delta"), (3, "echo foxtrot")]
        assert len({f["segment"] for f in got}) == 3


def test_redis_killed_and_restarted_mid_stream_loses_no_acknowledged_final(tmp_path, redis_server):
    with nodes(tmp_path, redis_server, "a", "b") as (a, b):
        viewer = watch(b.url, "hall")
        from tests.scripted import VOCABULARY

        words = list(VOCABULARY[:12])
        result: dict = {}
        publisher = threading.Thread(target=lambda: result.update(zip(("messages", "code"), publish(a.url, speak(*words), "room=hall&mode=file", 0.02))))
        publisher.start()
        finals_until(viewer, 3)
        redis_server.kill()  # mid-stream
        time.sleep(1.0)
        redis_server.start()  # the same files (AOF) and port
        publisher.join(60)
        sent = finals(result["messages"])
        assert result["code"] == 1000 and [f["text"] for f in sent] == words
        # Every final the publisher got a seq for is in the store, once, in order; the viewer on
        # the other node gets all twelve, in order, once.
        with watch(b.url, "hall", since=0) as late:
            kept = finals_until(late, 12)
        assert [f["text"] for f in kept] == words and [f["seq"] for f in kept] == list(range(1, 13))
        assert all(kept[f["seq"] - 1]["text"] == f["text"] for f in sent if f.get("seq"))
        live = [f for f in finals_until(viewer, 9, timeout=30)]
        assert [f["text"] for f in live] == words[3:]
        viewer.close()


def test_redis_down_for_10_s_live_captions_go_on_and_finals_are_written_after(tmp_path, redis_server):
    with nodes(tmp_path, redis_server, "a", "b") as (a, b):
        here, there = watch(a.url, "hall"), watch(b.url, "hall")
        publish(a.url, speak("alpha"), "room=hall")
        assert [f["seq"] for f in finals_until(here, 1)] == [1] and [f["seq"] for f in finals_until(there, 1)] == [1]
        redis_server.kill()
        down = time.monotonic()
        messages, code = publish(a.url, speak("bravo", "charlie", "delta"), "room=hall")
        live = finals_until(here, 3)
        assert code == 1000 and [f["text"] for f in live] == ["bravo", "charlie", "delta"] and all("seq" not in f for f in live)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{a.url.replace('ws', 'http')}/readyz")
        assert refused.value.code == 503 and json.loads(refused.value.read()) == {"ready": False, "store": "down"}
        refused.value.close()
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        redis_server.start()
        # Written in order when the store is back: numbered, seen on both nodes, once.
        again = finals_until(here, 3)
        assert [(f["seq"], f["text"]) for f in again] == [(2, "bravo"), (3, "charlie"), (4, "delta")]
        assert [(f["seq"], f["text"]) for f in finals_until(there, 3)] == [(2, "bravo"), (3, "charlie"), (4, "delta")]
        with urllib.request.urlopen(f"{a.url.replace('ws', 'http')}/readyz") as reply:
            assert json.load(reply) == {"ready": True, "store": "up"}
        with watch(b.url, "hall", since=0) as late:
            assert [f["text"] for f in finals_until(late, 4)] == ["alpha", "bravo", "charlie", "delta"]
        here.close()
        there.close()


def test_a_busy_node_sends_a_new_publisher_to_another(tmp_path, redis_server):
    from streaming.client import stream_file

    # Node a refuses new publishers (its engine counts as saturated at once); b has room.
    busy = ScriptedModel(compute_s=0.3)
    a = node(tmp_path, redis_server, "a", busy, max_decode_wait_s=0.01)
    b = node(tmp_path, redis_server, "b")
    try:
        keep_busy = threading.Thread(target=publish, args=(a.url, speak("alpha bravo charlie", "delta echo"), "room=one", 0.0))
        keep_busy.start()
        deadline = time.monotonic() + 20
        while not a.server.engine.overloaded and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.5)  # b's entry, and a's, read by a (nodes.EVERY_S)
        assert a.server.engine.overloaded and any(n["node"] == "b" for n in a.server.nodes)
        path = tmp_path / "golf.wav"
        write_wav(path, speak("golf hotel"))
        got: list[dict] = []
        result = run_async(stream_file(a.url, path, got.append, speed=None, room="two"))
        assert result.ready["type"] == "ready" and result.close_code == 1000
        assert [m["text"] for m in got if m["type"] == "final"] == ["golf hotel"]
        assert [p.params.room for p in b.server.sessions.live.values()] == [] and b.server.rooms.store.last_seq("two") == 1
        keep_busy.join(60)
    finally:
        a.stop()
        b.stop()


def test_a_token_revoked_in_the_store_is_refused_by_every_node(tmp_path, redis_server):
    from streaming import auth
    from streaming.cli import main

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    with nodes(tmp_path, redis_server, "a", "b", auth="on", secret_file=secret) as (a, b):
        token = auth.create_token(secret.read_bytes(), "hall", "view", 3600)
        for server in (a, b):
            with connect(f"{server.url}/v1/captions?room=hall&token={token}") as viewer:
                assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        assert main(["token", "revoke", token, "--store", redis_server.url, "--data-dir", str(tmp_path / "cli")]) == 0
        time.sleep(2.5)  # each node reads the list every 2 s
        for server in (a, b):
            with connect(f"{server.url}/v1/captions?room=hall&token={token}") as viewer:
                refused = json.loads(viewer.recv(timeout=10))
            assert refused["code"] == "unauthorized" and refused["message"] == "token revoked"


def test_the_capture_page_follows_a_busy_node_to_another(tmp_path, redis_server, context):  # noqa: F811
    """In Chromium, with its fake microphone: node a is too busy and names node b; the page
    publishes to b (which allows pages from other origins, here a's)."""
    from tests.test_web import wait_for

    a = node(tmp_path, redis_server, "a", ScriptedModel(compute_s=0.3), max_decode_wait_s=0.01)
    b = node(tmp_path, redis_server, "b", allow_origins=("*",))
    try:
        keep_busy = threading.Thread(target=publish, args=(a.url, speak("alpha bravo charlie", "delta echo"), "room=one", 0.0))
        keep_busy.start()
        deadline = time.monotonic() + 20
        while not (a.server.engine.overloaded and any(n["node"] == "b" for n in a.server.nodes)) and time.monotonic() < deadline:
            time.sleep(0.05)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{a.port}/capture?room=moved&speaker=Ada")
        page.click("#start")
        wait_for(page, "document.body.dataset.state === 'live'", 20)
        assert [p.room.name for p in b.server.sessions.live.values()] == ["moved"]
        assert all(p.room.name != "moved" for p in a.server.sessions.live.values())
        page.click("#stop")
        keep_busy.join(60)
    finally:
        a.stop()
        b.stop()


def two_finals(publisher) -> dict:
    """Publish two utterances on an open publisher connection until both finals came; its ready."""
    ready = json.loads(publisher.recv(timeout=10))
    for chunk in chunks(speak("alpha bravo", "charlie delta")):
        publisher.send(chunk)
    receive_until(publisher, lambda m: m["type"] == "final" and m["text"] == "charlie delta", 30)
    return ready


def chunks(audio, size: int = 1600):
    for offset in range(0, len(audio), size):
        yield pcm16(audio[offset : offset + size])


def write_wav(path, audio) -> None:
    import wave

    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm16(audio))

