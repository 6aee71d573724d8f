"""Which dialect a connection speaks, from its path: the one place other services' routes are
listed."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

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


def refusal(path: str, message: str, status: int) -> HandshakeError:
    """A refusal of a connection to one of :data:`PATHS` for a reason of the server's own
    (a bad token, no capacity), as that service gives it."""
    return deepgram.DeepgramError(message, status) if route_of(path) == deepgram.PATH else openai_realtime.OpenAIError(message, status)
