"""Access control: every token case, on the WebSocket routes and the HTTP ones (a real server,
with the scripted model: what is checked is who may do what, not what is heard)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from streaming import auth
from streaming.access import AccessPolicy, token_of
from streaming.config import ServerConfig
from streaming.protocol import ProtocolError
from streaming.server import CaptionServer
from tests.conftest import ServerThread
from tests.scripted import ScriptedModel, speak
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


def test_each_role_may_do_what_it_says_and_no_more():
    allowed = {"view": {"view"}, "publish": {"view", "publish"}, "admin": {"view", "publish", "admin"}}
    for role, actions in allowed.items():
        grant = auth.verify_token(SECRET, auth.create_token(SECRET, "hall", role, 60))
        for action in ("view", "publish", "admin"):
            if action in actions:
                auth.check(grant, "hall", action)
            else:
                with pytest.raises(auth.Unauthorized, match=f"a {role} token cannot {action}"):
                    auth.check(grant, "hall", action)
            with pytest.raises(auth.Unauthorized, match="not lobby"):
                auth.check(grant, "lobby", action)  # another room: nothing at all
    with pytest.raises(ValueError):
        auth.create_token(SECRET, "hall", "owner", 60)
    unknown = auth._b64(json.dumps({"room": "hall", "role": "owner", "exp": 2**40}).encode())
    signature = auth._b64(hmac.new(SECRET, auth._unb64(unknown), hashlib.sha256).digest())
    with pytest.raises(auth.Unauthorized, match="unknown role"):
        auth.verify_token(SECRET, f"{unknown}.{signature}")  # signed, but no role we know


def test_the_access_policy_asks_for_a_token_only_where_it_must():
    policy = AccessPolicy(required=True, secret=SECRET)
    publish_token = auth.create_token(SECRET, "hall", "publish", 60)
    policy.authorize(publish_token, "hall", "publish")
    for token, room, action in (
        (None, "hall", "view"),
        (auth.create_token(SECRET, "hall", "view", 60), "hall", "publish"),
        (publish_token, "lobby", "publish"),
        (publish_token, "hall", "admin"),
        (auth.create_token(SECRET, "hall", "publish", -1), "hall", "publish"),
    ):
        with pytest.raises(ProtocolError) as refusal:
            policy.authorize(token, room, action)
        assert refusal.value.code == "unauthorized"
    AccessPolicy(required=False, secret=b"").authorize(None, "hall", "admin")  # access control off
    public = AccessPolicy(required=True, secret=SECRET, public_rooms=True)
    public.authorize(None, "hall", "view")
    with pytest.raises(ProtocolError):
        public.authorize(None, "hall", "publish")  # public rooms are for watching only
    assert token_of({"token": "a"}, "Bearer b") == "a" and token_of({}, "Bearer b") == "b"
    assert token_of({}, "Basic b") is None and token_of({}, None) is None


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    data = tmp_path_factory.mktemp("guarded")
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=data, auth="on"), ScriptedModel())).start()
    running.secret = auth.load_secret(data)
    running.data = data
    yield running
    running.stop()


def test_auto_is_off_on_loopback_and_on_elsewhere(tmp_path):
    assert not CaptionServer(ServerConfig(host="127.0.0.1", data_dir=tmp_path), ScriptedModel()).access.required
    assert CaptionServer(ServerConfig(host="0.0.0.0", data_dir=tmp_path), ScriptedModel()).access.required
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
        "viewer of another room": f"/v1/captions?room=hall&token={make('lobby', 'view')}",
        "viewer expired": f"/v1/captions?room=hall&token={make('hall', 'view', -1)}",
    }
    with caplog.at_level(logging.WARNING):
        for case, path in wrong.items():
            message, code = refused(guarded.url, path)
            assert message["code"] == "unauthorized" and code == 1008, case
    assert len([r for r in caplog.records if "refused to" in r.getMessage()]) >= len(wrong)
    tokens = [path.split("token=")[1] for path in wrong.values() if "token=" in path]
    for record in caplog.records:
        assert not any(token in record.getMessage() for token in tokens)  # tokens are never logged

    messages, code = publish(guarded.url, speak("alpha bravo"), f"room=hall&token={make('hall', 'publish')}")
    assert code == 1000 and [f["text"] for f in finals(messages)] == ["alpha bravo"]
    messages, code = publish(guarded.url, speak("charlie"), f"room=hall&token={make('*', 'admin')}")  # admin: anywhere
    assert code == 1000 and [f["text"] for f in finals(messages)] == ["charlie"]
    with connect(f"{guarded.url}/v1/captions?room=hall&since=0", additional_headers={"Authorization": f"Bearer {make('hall', 'view')}"}) as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        assert [json.loads(viewer.recv(timeout=10))["text"] for _ in range(2)] == ["alpha bravo", "charlie"]


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


def test_public_rooms_let_viewers_in_without_a_token(tmp_path):
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, auth="on", public_rooms=True), ScriptedModel())).start()
    try:
        with connect(f"{running.url}/v1/captions?room=open") as viewer:
            assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        message, code = refused(running.url, "/v1/publish?room=open")
        assert message["code"] == "unauthorized"
    finally:
        running.stop()
