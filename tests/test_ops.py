"""Operating the server: metrics, readiness, TLS, browser origins."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

from streaming.config import ServerConfig
from streaming.server import CaptionServer
from tests.conftest import CLIPS, ServerThread
from tests.test_server import finals, publish, refused


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url.replace("ws://", "http://") + "/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_count_what_happened(server):
    before = _metrics(server.url)
    # At real-time pace, so that partials are decoded (sent as a file, they may all be
    # withdrawn for the final, the recording being over before they finish).
    messages, _ = publish(server.url, CLIPS["en_arctic_a0024"].audio, "room=metrics", pace=0.1)
    refused(server.url, "/v1/publish?sample_rate=1")
    after = _metrics(server.url)
    assert after["flashcaption_decodes_total"] > before["flashcaption_decodes_total"]
    assert after["flashcaption_decoded_audio_seconds_total"] > before["flashcaption_decoded_audio_seconds_total"]
    got = after['flashcaption_final_latency_seconds_count'] - before['flashcaption_final_latency_seconds_count']
    assert got == len(finals(messages)) >= 1
    assert after['flashcaption_final_latency_seconds_bucket{le="+Inf"}'] == after["flashcaption_final_latency_seconds_count"]
    assert after['flashcaption_errors_total{code="bad_request"}'] >= before.get('flashcaption_errors_total{code="bad_request"}', 0) + 1
    assert after["flashcaption_real_time_factor"] > 0
    for gauge in ("flashcaption_publishers", "flashcaption_viewers", "flashcaption_rooms", "flashcaption_decode_queue"):
        assert gauge in after
    # The model's calls by kind, and by rows: every step call is counted once under its rows.
    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew('flashcaption_model_calls_total{kind="encoder"}') >= got
    assert grew('flashcaption_model_compute_seconds_total{kind="encoder"}') > 0
    steps = grew('flashcaption_model_calls_total{kind="decoder step"}')
    assert steps > 0 and grew('flashcaption_model_rows_total{kind="decoder step"}') >= steps
    by_rows = sum(grew(name) for name in after if name.startswith('flashcaption_model_batches_total{kind="decoder step",rows='))
    assert by_rows == steps
    # Decodes by what they were for: the kinds add up to all decodes, and finals (or early
    # finals that became them) and partials were among them.
    kinds = [name for name in after if name.startswith("flashcaption_decode_requests_total{")]
    assert sum(grew(name) for name in kinds) == grew("flashcaption_decodes_total")
    assert grew('flashcaption_decode_requests_total{kind="partial"}') >= 1
    assert grew('flashcaption_decode_requests_total{kind="final"}') + grew('flashcaption_decode_requests_total{kind="early final"}') >= got
    assert sum(grew(n.replace("requests_total", "request_audio_seconds_total")) for n in kinds) == pytest.approx(
        grew("flashcaption_decoded_audio_seconds_total"))
    # Faster than real time: time in model calls against the audio decoded meanwhile.
    compute = sum(grew(name) for name in after if name.startswith("flashcaption_model_compute_seconds_total{"))
    assert 0 < compute < grew("flashcaption_decoded_audio_seconds_total")


def test_readyz(server):
    reply = urllib.request.urlopen(server.url.replace("ws://", "http://") + "/readyz", timeout=10)
    assert reply.status == 200 and json.loads(reply.read()) == {"ready": True, "store": "up"}


def test_tls(model, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    config = ServerConfig(port=0, data_dir=tmp_path, certfile=cert, keyfile=key)
    running = ServerThread(CaptionServer(config, model)).start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        with connect(f"wss://127.0.0.1:{running.port}/v1/captions?room=tls", ssl=trust) as viewer:
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        assert urllib.request.urlopen(f"https://127.0.0.1:{running.port}/healthz", context=trust, timeout=10).status == 200
        # Plain WebSocket on the TLS port: no HTTP answer (or a reset, if the request went unread).
        with pytest.raises((InvalidMessage, ConnectionResetError)):
            with connect(f"ws://127.0.0.1:{running.port}/v1/captions?room=tls", open_timeout=5):
                pass
    finally:
        running.stop()


def test_origin_allow_list(model, tmp_path):
    config = ServerConfig(port=0, data_dir=tmp_path, allow_origins=("https://studio.example.org",))
    running = ServerThread(CaptionServer(config, model)).start()
    try:
        with connect(f"{running.url}/v1/captions?room=o", origin="https://studio.example.org") as viewer:
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        with connect(f"{running.url}/v1/captions?room=o") as viewer:  # not a browser: no Origin
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        with pytest.raises(InvalidStatus) as refused_origin:
            with connect(f"{running.url}/v1/captions?room=o", origin="https://evil.example.com"):
                pass
        assert refused_origin.value.response.status_code == 403
    finally:
        running.stop()


def test_limits(model, tmp_path):
    config = ServerConfig(
        port=0, data_dir=tmp_path, max_viewers_per_ip=2, max_publishers_per_room=1, max_viewers_per_room=1,
        idle_timeout_s=1.0, audio_burst_s=1.0,
    )
    running = ServerThread(CaptionServer(config, model)).start()
    try:
        with connect(f"{running.url}/v1/captions?room=a") as first:
            json.loads(first.recv(timeout=10))
            message, code = refused(running.url, "/v1/captions?room=a")
            assert message["code"] == "overloaded" and "most viewers" in message["message"] and code == 1013
            with connect(f"{running.url}/v1/publish?room=a") as publisher:
                json.loads(publisher.recv(timeout=10))
                message, code = refused(running.url, "/v1/publish?room=a")
                assert "most publishers" in message["message"] and code == 1013
                with connect(f"{running.url}/v1/captions?room=b") as other:
                    json.loads(other.recv(timeout=10))  # counted: the handshake alone can beat the count
                    message, code = refused(running.url, "/v1/captions?room=c")  # a third viewer from this address
                    assert "too many viewers from your address" in message["message"] and code == 1013
        # A publisher that goes quiet is closed with a reason.
        with connect(f"{running.url}/v1/publish?room=idle") as quiet:
            json.loads(quiet.recv(timeout=10))
            message = json.loads(quiet.recv(timeout=10))
            assert message["code"] == "bad_request" and "no audio" in message["message"]
        # Live audio far faster than real time is refused at once, with the reason; a file is taken.
        audio = (np.zeros(4 * 16000, "<i2")).tobytes()
        for mode in ("live", "file"):
            with connect(f"{running.url}/v1/publish?room=fast-{mode}&mode={mode}") as ws:
                json.loads(ws.recv(timeout=10))
                started = time.monotonic()
                with contextlib.suppress(ConnectionClosed):
                    for offset in range(0, len(audio), 3200):
                        ws.send(audio[offset : offset + 3200])
                    ws.send('{"type":"end"}')
                received = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        received.append(json.loads(ws.recv(timeout=30)))
                took = time.monotonic() - started
            if mode == "live":
                errors = [m for m in received if m["type"] == "error"]
                assert ws.close_code == 1008 and errors and "mode=file" in errors[0]["message"], received
            else:
                assert ws.close_code == 1000 and took < 1.5, took
    finally:
        running.stop()


def test_a_saturated_server_refuses_new_publishers_and_is_not_ready(model, tmp_path):
    import threading

    config = ServerConfig(port=0, data_dir=tmp_path, workers=1, decode_delay_s=1.5)
    running = ServerThread(CaptionServer(config, model)).start()
    speech = (CLIPS["en_ls_1995-1837-0001"].audio * 32767).astype("<i2").tobytes()

    def busy(room: str, stop: threading.Event) -> None:
        with connect(f"{running.url}/v1/publish?room={room}&mode=file") as ws:
            json.loads(ws.recv(timeout=10))
            for offset in range(0, len(speech), 16000):
                ws.send(speech[offset : offset + 16000])
            stop.wait(60)

    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(f"busy{i}", stop)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        base = running.url.replace("ws://", "http://")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and json.loads(urllib.request.urlopen(base + "/healthz").read())["decode_wait_s"] <= 0.75:
            time.sleep(0.5)
        message, code = refused(running.url, "/v1/publish?room=late")
        assert message["code"] == "overloaded" and code == 1013
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz", timeout=10)
        assert not_ready.value.code == 503
        # Once the load is gone the server takes new streams again, with no decode to tell it.
        stop.set()
        for thread in threads:
            thread.join(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and urllib.request.urlopen(base + "/healthz").status == 200:
            if json.loads(urllib.request.urlopen(base + "/healthz").read())["decode_queue"] == 0:
                break
            time.sleep(0.5)
        time.sleep(8)  # several half-lives of the wait estimate
        assert urllib.request.urlopen(base + "/readyz", timeout=10).status == 200
        with connect(f"{running.url}/v1/publish?room=after") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        running.stop()
