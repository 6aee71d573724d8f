"""Small pieces every handler uses: who the client is, an error event (and close), an HTTP
response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from streaming.access import Network, client_address, forwarded, token_of
from streaming.events import ErrorEvent, encode
from streaming.metrics import Metrics
from streaming.protocol import ProtocolError


@dataclass(frozen=True)
class Client:
    """Who is asking: the token presented, whether the request came through a proxy, and the
    client's address (behind a trusted proxy, the one it forwarded)."""

    token: str | None
    forwarded: bool
    address: str


def client_of(connection: ServerConnection, headers: Headers, query: Mapping[str, str], trusted: Sequence[Network]) -> Client:
    peer = str(connection.remote_address[0]) if connection.remote_address else ""
    return Client(token_of(query, headers.get("Authorization")), forwarded(headers), client_address(peer, headers, trusted))


async def send_error(connection: ServerConnection, error: ProtocolError, close: bool, metrics: Metrics | None = None) -> None:
    """Tell the client what went wrong; with ``close``, end the connection with the error's code."""
    if metrics is not None:
        metrics.errors[error.code] += 1
    try:
        await connection.send(encode(ErrorEvent(error.code, error.message)))
        if close:
            await connection.close(error.close_code, close_reason(error.message))
    except websockets.ConnectionClosed:
        pass


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame carries (123 bytes of UTF-8), on a character boundary."""
    return text.encode("utf-8")[:123].decode("utf-8", errors="ignore")


def response(status: HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode("utf-8")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, data)
