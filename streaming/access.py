"""Who may do what: tokens and roles, and the per-address connection limit. Pure decisions,
no I/O: the server asks, and turns a refusal (a :class:`ProtocolError`) into a response.

Token format and signing are :mod:`streaming.auth`'s; this module decides when a token is
needed, where it is found in a request, and what it must allow.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping

from streaming import auth
from streaming.protocol import ProtocolError

log = logging.getLogger(__name__)

AUTH_MODES = ("auto", "on", "off")


def auth_required(mode: str, host: str) -> bool:
    """``--auth``: ``auto`` requires tokens unless the server listens on loopback only."""
    if mode not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    return mode == "on" or (mode == "auto" and not auth.is_loopback(host))


def token_of(query: Mapping[str, str], authorization: str | None) -> str | None:
    """The request's token: ``token=`` in the query, else ``Authorization: Bearer``."""
    token = query.get("token")
    if token is None and authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return token or None


class AccessPolicy:
    """Whether a request's token allows an action (``view``, ``publish``, ``admin``) in a room."""

    def __init__(self, required: bool, secret: bytes, public_rooms: bool = False):
        self.required = required
        self.public_rooms = public_rooms  # viewers need no token
        self._secret = secret

    def allows(self, token: str | None, room: str, action: str) -> bool:
        """Whether ``token`` allows ``action`` in ``room`` (nothing logged: for optional extras)."""
        if not self.required or (action == "view" and self.public_rooms):
            return True
        try:
            auth.check(auth.verify_token(self._secret, token or ""), room, action)
        except auth.Unauthorized:
            return False
        return True

    def authorize(self, token: str | None, room: str, action: str) -> None:
        """Raise ``unauthorized`` unless ``token`` allows ``action`` in ``room``."""
        if not self.required or (action == "view" and self.public_rooms):
            return
        try:
            if not token:
                raise auth.Unauthorized("a token is required (token= or Authorization: Bearer)")
            auth.check(auth.verify_token(self._secret, token), room, action)
        except auth.Unauthorized as error:
            log.warning("refused to %s: %s", action, error, extra={"room": room})  # never the token
            raise ProtocolError("unauthorized", str(error)) from None


class ConnectionCounter:
    """Open connections per client address, refused past ``limit`` (0: no limit)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()

    def acquire(self, address: str) -> None:
        """Count a new connection from ``address``; ``overloaded`` (not counted) past the limit."""
        if self.limit and self._open[address] >= self.limit:
            raise ProtocolError("overloaded", f"too many connections from your address (at most {self.limit})")
        self._open[address] += 1

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def __len__(self) -> int:
        return sum(self._open.values())
