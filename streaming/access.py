"""Who may do what, and who a client is: tokens and roles, the client's address behind trusted
proxies, per-address connection limits. Pure decisions, no I/O: the server asks, and turns a
refusal (a :class:`ProtocolError`) into a response.

Token format and signing are :mod:`streaming.auth`'s; this module decides when a token is
needed, where it is found in a request, and what it must allow.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence

from streaming import auth
from streaming.protocol import ProtocolError

log = logging.getLogger(__name__)

AUTH_MODES = ("auto", "on", "off")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def auth_required(mode: str, host: str) -> bool:
    """``--auth``: ``auto`` requires tokens unless the server listens on loopback only."""
    if mode not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    return mode == "on" or (mode == "auto" and not auth.is_loopback(host))


def token_of(query: Mapping[str, str], authorization: str | None) -> str | None:
    """The request's token: ``token=`` in the query, else ``Authorization: Bearer TOKEN`` (or
    ``Token TOKEN``, as Deepgram's clients send their key)."""
    token = query.get("token")
    if token is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() in ("bearer", "token"):
            token = value.strip()
    return token or None


class AccessPolicy:
    """Whether a request's token allows an action (``view``, ``publish``, ``admin``, or
    ``delete``, which takes the admin role) in a room.

    ``required``: every request needs a token. ``forwarded_required``: a request that came
    through a proxy (it carries ``Forwarded`` or ``X-Forwarded-For``) needs one even when
    ``required`` is off: ``--auth auto`` on a loopback address behind a reverse proxy is not
    open to the internet. A ``delete`` needs a token unless ``anonymous_delete`` (``--auth
    off``, the operator's own words): a proxy that forwards without saying so must not turn
    ``auto`` into "anyone may erase a room"."""

    def __init__(
        self, required: bool, secret: bytes, public_rooms: bool = False, forwarded_required: bool = False, anonymous_delete: bool = False
    ):
        self.required = required
        self.forwarded_required = forwarded_required
        self.public_rooms = public_rooms  # viewers need no token
        self.anonymous_delete = anonymous_delete
        self._secret = secret
        # Revoked tokens (auth.token_id), read from the store every few seconds by the server.
        self.revoked: frozenset[str] = frozenset()

    def refusal(self, token: str | None, room: str, action: str, forwarded: bool = False) -> str | None:
        """Why ``token`` does not allow ``action`` in ``room``; None if it does (or none is needed)."""
        needed = self.required or (forwarded and self.forwarded_required) or (action == "delete" and not self.anonymous_delete)
        if not needed or (action == "view" and self.public_rooms):
            return None
        if not token:
            return "a token is required (token= or Authorization: Bearer)"
        try:
            auth.check(auth.verify_token(self._secret, token), room, "admin" if action == "delete" else action)
            if self.revoked and auth.token_id(token) in self.revoked:
                raise auth.Unauthorized("token revoked")
        except auth.Unauthorized as error:
            return str(error)
        return None

    def allows(self, token: str | None, room: str, action: str, forwarded: bool = False) -> bool:
        """Whether ``token`` allows ``action`` in ``room`` (nothing logged: for optional extras)."""
        return self.refusal(token, room, action, forwarded) is None

    def authorize(self, token: str | None, room: str, action: str, forwarded: bool = False) -> None:
        """Raise ``unauthorized`` unless ``token`` allows ``action`` in ``room``."""
        reason = self.refusal(token, room, action, forwarded)
        if reason is not None:
            log.warning("refused to %s: %s", action, reason, extra={"room": room})  # never the token
            raise ProtocolError("unauthorized", reason)


class ConnectionCounter:
    """Open connections per client address and kind (``publish``, ``view``), each kind with
    its own limit (0: none): an audience behind one NAT is many viewers from one address, and
    must not lock its own speaker out."""

    def __init__(self, limits: Mapping[str, int]):
        self.limits = dict(limits)
        self._open: collections.Counter[tuple[str, str]] = collections.Counter()

    def acquire(self, kind: str, address: str) -> None:
        """Count a new connection; ``overloaded`` (and not counted) past the kind's limit."""
        limit = self.limits.get(kind, 0)
        if limit and self._open[kind, address] >= limit:
            noun = "publishers" if kind == "publish" else "viewers"
            raise ProtocolError("overloaded", f"too many {noun} from your address (at most {limit})")
        self._open[kind, address] += 1

    def release(self, kind: str, address: str) -> None:
        self._open[kind, address] -= 1
        if self._open[kind, address] <= 0:
            del self._open[kind, address]

    def __len__(self) -> int:
        return sum(self._open.values())


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values: addresses or CIDR blocks; ValueError names a bad one."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy: {spec!r} is not an IP address or CIDR block") from None
    return tuple(networks)


def client_address(peer: str, headers: Mapping[str, str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
    address in ``X-Forwarded-For`` (or ``Forwarded: for=``) that is not itself a trusted proxy.
    Headers from any other peer are ignored: a client cannot choose its own address."""
    if not _within(peer, trusted):
        return peer
    hops = _forwarded_for(headers)
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a browser page at ``origin`` may connect. Clients that send no Origin (not
    browsers) always may; a page of this server's own (its Origin names the Host the request
    was sent to, whatever the scheme: TLS may end at a proxy) may; others only if ``allowed``
    lists them, or holds ``*``."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    _, _, netloc = origin.partition("://")
    return bool(host) and netloc.lower() == (host or "").lower()


def forwarded(headers: Mapping[str, str]) -> bool:
    """Whether a request says it came through a proxy."""
    return any(name in headers for name in ("Forwarded", "X-Forwarded-For"))


def _forwarded_for(headers: Mapping[str, str]) -> list[str]:
    if "X-Forwarded-For" in headers:
        return [hop.strip() for hop in headers["X-Forwarded-For"].split(",") if hop.strip()]
    hops = []
    for element in headers.get("Forwarded", "").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for" and value:
                value = value.strip('"')
                if value.startswith("["):  # [IPv6]:port
                    value = value[1 : value.find("]")]
                elif value.count(":") == 1:  # IPv4:port
                    value = value.split(":")[0]
                hops.append(value)
    return hops


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
