"""Small pieces every handler uses: who the client is, an error event (and close), an HTTP
response, sends that give up on a client that stops reading, and the keepalive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from streaming.access import Network, client_address, forwarded, token_of
from streaming.compat import NATIVE, Dialect
from streaming.metrics import Metrics
from streaming.protocol import ProtocolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Client:
    """Who is asking: the token presented, whether the request came through a proxy, and the
    client's address (behind a trusted proxy, the one it forwarded)."""

    token: str | None
    forwarded: bool
    address: str


class Link(Protocol):
    """What a publisher's session needs of its connection: a WebSocket (websockets'
    ServerConnection), or a file transcription's stand-in (:mod:`streaming.server.transcribe`)."""

    @property
    def transport(self) -> asyncio.Transport: ...

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def ping(self) -> Awaitable[float]: ...


def client_of(connection: ServerConnection, headers: Headers, query: Mapping[str, str], trusted: Sequence[Network]) -> Client:
    peer = str(connection.remote_address[0]) if connection.remote_address else ""
    return client_from(peer, headers, query, trusted)


def client_from(peer: str, headers: Headers, query: Mapping[str, str], trusted: Sequence[Network]) -> Client:
    """The client at address ``peer`` that sent ``headers`` and ``query``."""
    return Client(token_of(query, headers.get("Authorization")), forwarded(headers), client_address(peer, headers, trusted))


async def send_error(
    connection: Link, error: ProtocolError, close: bool, metrics: Metrics | None = None, dialect: Dialect = NATIVE
) -> None:
    """Tell the client what went wrong, in its dialect; with ``close``, end the connection with
    the error's code."""
    if metrics is not None:
        metrics.errors[error.code] += 1
    try:
        await connection.send(dialect.error(error))
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


class Stalled(Exception):
    """The client's socket took nothing for too long; its connection was aborted."""


async def send_within(connection: Link, text: str, seconds: float, what: str) -> None:
    """Send, or abort the connection of a client (``what``) whose socket has taken nothing for
    ``seconds``: one that stops reading would otherwise hold its buffers, and whatever waits on
    the send, for ever (the keepalive's ping waits behind them and never times out)."""
    try:
        await asyncio.wait_for(connection.send(text), seconds)
    except TimeoutError:
        log.info("closing a %s that stopped reading for %g s", what, seconds)
        connection.transport.abort()
        raise Stalled from None


class Keepalive:
    """Pings the client every ``interval`` seconds and closes its connection (1011) if no pong
    comes within another ``interval``, so that a client gone without a word stops holding a
    slot. Used instead of websockets' own keepalive for one reason: the server may hold a
    client's reading back on purpose (a recording sent faster than it is decoded, see
    ``publish``), and then the pong waits in the socket behind audio the server has not read
    yet. A ping that meets a hold does not count: the client is waiting for the server, not the
    other way round."""

    def __init__(self, connection: Link, interval: float):
        self.connection = connection
        self.interval = interval
        self._holds = 0
        self._held_since_ping = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """The server stops reading the client while inside."""
        self._holds += 1
        self._held_since_ping = True
        try:
            yield
        finally:
            self._holds -= 1

    async def run(self) -> None:
        while self.interval > 0:
            await asyncio.sleep(self.interval)
            if self._holds:
                continue
            self._held_since_ping = False
            try:
                pong = await self.connection.ping()
                await asyncio.wait_for(pong, self.interval)
            except TimeoutError:
                if self._holds or self._held_since_ping:
                    continue
                log.info("closing a connection whose client did not answer a ping in %g s", self.interval)
                await self.connection.close(1011, "keepalive ping timeout")
                return
            except websockets.ConnectionClosed:
                return
