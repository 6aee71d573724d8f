"""Which dialect a connection speaks, from its path: the one place other services' routes are
listed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from websockets.datastructures import Headers

from streaming.compat import Dialect, deepgram, openai_realtime
from streaming.compat.wire import HandshakeError
from streaming.protocol import PublishParams

PATHS = (deepgram.PATH, openai_realtime.PATH)


def route_of(path: str) -> str:
    return urlsplit(path).path


def open_dialect(path: str, connection_id: uuid.UUID, model_name: str) -> tuple[PublishParams, Dialect]:
    """The session's parameters and the dialect of a connection to one of :data:`PATHS`; a
    connection that names no room gets its own. Raises HandshakeError."""
    route = route_of(path)
    if route == deepgram.PATH:
        listen = deepgram.parse_listen(path, deepgram.connection_room(connection_id))
        return listen.publish, deepgram.DeepgramDialect(listen, model_name)
    if route == openai_realtime.PATH:
        realtime = openai_realtime.parse_realtime(path, openai_realtime.connection_room(connection_id))
        return realtime.publish, openai_realtime.RealtimeDialect(realtime, model_name)
    raise ValueError(f"{route} is not another service's route")


def offered_subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",") if p.strip()]


def subprotocol_token(path: str, headers: Headers) -> str | None:
    """A key sent as WebSocket subprotocols, where the route's service takes one that way."""
    return deepgram.subprotocol_key(offered_subprotocols(headers)) if route_of(path) == deepgram.PATH else None


def select_subprotocol(path: str, offered: Sequence[str]) -> str | None:
    """The subprotocol to answer a WebSocket handshake with: Deepgram's browser clients send their
    key as ``token, KEY`` and fail unless ``token`` is answered; every other route takes none."""
    return offered[0] if route_of(path) == deepgram.PATH and deepgram.subprotocol_key(list(offered)) else None


def refusal(path: str, message: str, status: int) -> HandshakeError:
    """A refusal of a connection to one of :data:`PATHS` for a reason of the server's own
    (a bad token, no capacity), as that service gives it."""
    return deepgram.DeepgramError(message, status) if route_of(path) == deepgram.PATH else openai_realtime.OpenAIError(message, status)
