"""Access control: every token case, on the WebSocket routes and the HTTP ones."""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from streaming import auth
from streaming.config import ServerConfig
from streaming.server import CaptionServer
from tests.conftest import CLIPS, ServerThread
from tests.test_cli import flashcaption
from tests.test_server import finals, publish, refused

SECRET = b"test-secret"


def test_tokens():
    token = auth.create_token(SECRET, "hall", "publish", 60)
    grant = auth.verify_token(SECRET, token)
    assert (grant.room, grant.role) == ("hall", "publish")
    auth.check(grant, "hall", "publish")
    auth.check(grant, "hall", "view")  # a publisher may watch its room
    for room, action, reason in (("other", "publish", "not other"), ("hall", "admin", "cannot admin")):
        with pytest.raises(auth.Unauthorized, match=reason):
            auth.check(grant, room, action)
    auth.check(auth.verify_token(SECRET, auth.create_token(SECRET, "*", "admin", 60)), "any", "admin")
    with pytest.raises(auth.Unauthorized, match="expired"):
        auth.verify_token(SECRET, auth.create_token(SECRET, "hall", "view", 60, now=time.time() - 120))
    with pytest.raises(auth.Unauthorized, match="signature"):
        auth.verify_token(b"another secret", token)
    payload, signature = token.split(".")
    forged = auth._b64(json.dumps({"room": "*", "role": "admin", "exp": 2**40}).encode()) + "." + signature
    with pytest.raises(auth.Unauthorized, match="signature"):
        auth.verify_token(SECRET, forged)
    for garbage in ("", "abc", "a.b.c", "!!.??"):
        with pytest.raises(auth.Unauthorized):
            auth.verify_token(SECRET, garbage)
    assert auth.parse_ttl("2h") == 7200 and auth.parse_ttl("90") == 90 and auth.parse_ttl("7d") == 604800
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and auth.is_loopback("localhost")
    assert not auth.is_loopback("0.0.0.0") and not auth.is_loopback("10.0.0.5") and not auth.is_loopback("example.org")


@pytest.fixture(scope="module")
def guarded(model, tmp_path_factory):
    data = tmp_path_factory.mktemp("guarded")
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=data, auth="on"), model)).start()
    running.secret = auth.load_secret(data)
    running.data = data
    yield running
    running.stop()


def test_auto_is_off_on_loopback_and_on_elsewhere(model, tmp_path):
    assert not CaptionServer(ServerConfig(host="127.0.0.1", data_dir=tmp_path), model).access.required
    assert CaptionServer(ServerConfig(host="0.0.0.0", data_dir=tmp_path), model).access.required
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600  # made on first use, private


def test_websocket_routes_need_the_right_token(guarded, caplog):
    make = lambda room, role, ttl=60: auth.create_token(guarded.secret, room, role, ttl)  # noqa: E731
    wrong = {
        "no token": "/v1/publish?room=hall",
        "view token": f"/v1/publish?room=hall&token={make('hall', 'view')}",
        "other room": f"/v1/publish?room=hall&token={make('lobby', 'publish')}",
        "expired": f"/v1/publish?room=hall&token={make('hall', 'publish', -1)}",
        "forged": f"/v1/publish?room=hall&token={make('hall', 'publish')[:-4]}AAAA",
        "viewer without": "/v1/captions?room=hall",
    }
    with caplog.at_level(logging.WARNING):
        for case, path in wrong.items():
            message, code = refused(guarded.url, path)
            assert message["code"] == "unauthorized" and code == 1008, case
    assert len([r for r in caplog.records if "refused to" in r.getMessage()]) >= len(wrong)
    tokens = [path.split("token=")[1] for path in wrong.values() if "token=" in path]
    for record in caplog.records:
        assert not any(token in record.getMessage() for token in tokens)  # tokens are never logged

    messages, code = publish(guarded.url, CLIPS["en_arctic_a0024"].audio, f"room=hall&token={make('hall', 'publish')}")
    assert code == 1000 and finals(messages)
    with connect(f"{guarded.url}/v1/captions?room=hall&since=0", additional_headers={"Authorization": f"Bearer {make('hall', 'view')}"}) as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        assert json.loads(viewer.recv(timeout=10))["type"] == "final"


def test_http_routes_need_the_right_token(guarded):
    base = guarded.url.replace("ws://", "http://")
    view = auth.create_token(guarded.secret, "hall", "view", 60)
    admin = auth.create_token(guarded.secret, "*", "admin", 60)

    def status(path: str, method: str = "GET", token: str | None = None) -> int:
        request = urllib.request.Request(base + path, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            return urllib.request.urlopen(request, timeout=30).status
        except urllib.error.HTTPError as error:
            return error.code

    assert status("/v1/rooms/hall/transcript?format=txt") == 401
    assert status("/v1/rooms/hall/transcript?format=txt", token=view) == 200
    assert status(f"/v1/rooms/hall/transcript?format=txt&token={view}") == 200
    assert status("/v1/rooms/hall", "DELETE", token=view) == 401
    assert status("/v1/rooms/nobody-here", "DELETE", token=admin) == 200
    assert status("/healthz") == 200  # health needs no token


def test_token_command_prints_a_token_the_server_accepts(guarded):
    result = subprocess.run(
        flashcaption("token", "create", "--room", "hall", "--role", "view", "--ttl", "10m", "--data-dir", str(guarded.data)),
        capture_output=True, text=True, check=True,
    )
    token = result.stdout.strip()
    assert result.stdout == token + "\n"  # the token alone, for scripts
    grant = auth.verify_token(guarded.secret, token)
    assert grant.role == "view" and 590 <= grant.expires - time.time() <= 600
    with connect(f"{guarded.url}/v1/captions?room=hall&token={token}") as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"


def test_public_rooms_let_viewers_in_without_a_token(model, tmp_path):
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, auth="on", public_rooms=True), model)).start()
    try:
        with connect(f"{running.url}/v1/captions?room=open") as viewer:
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        message, code = refused(running.url, "/v1/publish?room=open")
        assert message["code"] == "unauthorized"
    finally:
        running.stop()
