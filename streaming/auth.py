"""Signed access tokens: which room, which role, until when.

A token is ``base64url(payload).base64url(HMAC-SHA256(secret, payload))`` where the payload is
compact JSON ``{"room": R or "*", "role": "publish"|"view"|"edit"|"admin", "exp": unix time}``. The
standard library does the cryptography; no token is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

ROLES = ("view", "publish", "edit", "admin")
# What each role may do: an admin may do anything, a publisher may also watch its room, an
# editor (a captioner correcting finals) watches and corrects.
ALLOWED = {"view": {"view"}, "publish": {"view", "publish"}, "edit": {"view", "edit"}, "admin": {"view", "publish", "edit", "admin"}}


class Unauthorized(Exception):
    pass


@dataclass(frozen=True)
class Grant:
    room: str
    role: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_token(secret: bytes, room: str, role: str, ttl_s: float, now: float | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    payload = json.dumps(
        {"room": room, "role": role, "exp": int((now or time.time()) + ttl_s)}, separators=(",", ":")
    ).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify_token(secret: bytes, token: str, now: float | None = None) -> Grant:
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except ValueError:
        raise Unauthorized("malformed token") from None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), signature):
        raise Unauthorized("token signature does not match")
    try:
        claims = json.loads(payload)
        grant = Grant(str(claims["room"]), str(claims["role"]), float(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        raise Unauthorized("malformed token") from None
    if grant.role not in ROLES:
        raise Unauthorized("unknown role in token")
    if grant.expires < (now or time.time()):
        raise Unauthorized("token expired")
    return grant


def token_id(token: str) -> str:
    """What names a token in the revocation list (a hash of its signature: not the token, which
    would let whoever reads the list use it)."""
    return hashlib.sha256(token.rpartition(".")[2].encode()).hexdigest()[:32]


def token_expiry(token: str) -> float:
    """When a token expires, read without checking its signature (for the revocation list, which
    forgets a token once it would have expired anyway); ValueError if it is not a token."""
    try:
        return float(json.loads(_unb64(token.split(".")[0]))["exp"])
    except (ValueError, KeyError, TypeError, IndexError):
        raise ValueError("not a FlashCaption token") from None


def check(grant: Grant, room: str, action: str) -> None:
    if grant.room not in ("*", room):
        raise Unauthorized(f"token is for room {grant.room}, not {room}")
    if action not in ALLOWED[grant.role]:
        raise Unauthorized(f"a {grant.role} token cannot {action}")


def load_secret(data_dir: Path, secret_file: Path | None = None) -> bytes:
    """FLASHCAPTION_SECRET, else --secret-file, else data_dir/secret (made on first use)."""
    configured = os.environ.get("FLASHCAPTION_SECRET")
    if configured:
        return configured.encode()
    path = secret_file or data_dir / "secret"
    if not path.exists():
        if secret_file is not None:
            raise FileNotFoundError(f"secret file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"ttl must be like 90, 15m, 2h or 7d, not {text!r}") from None
