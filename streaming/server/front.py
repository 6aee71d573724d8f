"""Requests with a body, which websockets cannot read: a connection's first line decides.

websockets reads a request's head only (an upgrade has no body) and drops any request that
announces one. :class:`FrontConnection`, websockets' own connection class, first looks at the
request line: a ``POST`` is read here with h11 (head, then body, each within bounds) and answered
by the handler for its path (``routes``, given by the server); anything else goes on to websockets as though
nothing had looked. One port, one TLS setup, one connection cap for both.

Bounds: the request line within :data:`OPENING_TIMEOUT_S` (as websockets' own handshake), a
head of at most :data:`MAX_HEAD_BYTES`, a body of at most the handler's limit, coming at least
every :data:`BODY_IDLE_S`; at most one read of the socket is held unparsed (reading pauses until
the handler takes it), the whole body at :data:`MIN_BODY_BYTES_PER_S`; an answer the client
stops reading is given up after ``send_stall_s``. Every answer closes the connection. Each
connection counts against the server's connection cap from its accept (``ServerState.sockets``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar

import h11
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers, MultipleValuesError

from streaming.server.connection import Stalled

if TYPE_CHECKING:
    from streaming.server.state import ServerState

log = logging.getLogger(__name__)

OPENING_TIMEOUT_S = 10.0  # the whole head, from the connection's start
MAX_HEAD_BYTES = 16 * 1024
MAX_REQUEST_LINE = 8 * 1024
BODY_IDLE_S = 30.0
# The whole body must come at this rate at least (past BODY_IDLE_S of grace): a client that
# trickles it would otherwise hold its place, and a transcription slot, for ever.
MIN_BODY_BYTES_PER_S = 32 * 1024
# After an answer to a request whose body was not read to its end (refused), what the client
# still sends is read and dropped for this long before the socket is closed: closed with data
# unread, the kernel resets the connection, and the client may lose the answer with it.
LINGER_S = 2.0


class BodyError(Exception):
    """The body could not be read: too large, too slow, or the client left."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Answer:
    """A response: a whole body, or chunks sent as they come (``Transfer-Encoding: chunked``)."""

    status: int
    body: bytes | AsyncGenerator[bytes, None]
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class BodyRequest:
    """A request's head, and its body on demand (so that a handler refuses what it would refuse
    before the client sends megabytes)."""

    def __init__(self, exchange: _Exchange, method: str, path: str, headers: Headers, peer: str):
        self._exchange = exchange
        self.method = method
        self.path = path
        self.headers = headers
        self.peer = peer

    @property
    def declared_length(self) -> int | None:
        """Content-Length, if the client gave one (h11 has checked that it is a number)."""
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    async def body(self, limit: int) -> bytes:
        """The whole body; BodyError past ``limit`` bytes, if it stops coming for
        :data:`BODY_IDLE_S`, or if the client leaves."""
        return await self._exchange.read_body(limit)

    @property
    def transport(self) -> asyncio.Transport:
        return self._exchange.transport

    @property
    def gone(self) -> bool:
        """The client closed its connection."""
        return self._exchange.lost.is_set()


Handler = Callable[["ServerState", BodyRequest], Awaitable[Answer]]


class _Exchange:
    """One request with a body, read and answered over h11."""

    def __init__(self, state: ServerState, routes: dict[str, Handler], transport: asyncio.Transport):
        self.state = state
        self.routes = routes
        self.transport = transport
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = asyncio.Event()
        self.discarding = False  # the request is read: what else comes is dropped
        self.body_done = False
        self.declared: int | None = None  # the request's Content-Length
        loop = asyncio.get_running_loop()
        self.head_deadline = loop.time() + OPENING_TIMEOUT_S
        self.task = loop.create_task(self._serve(), name="request with a body")
        state.exchanges.add(self.task)
        self.task.add_done_callback(state.exchanges.discard)

    # -- from the protocol -------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the socket (b"": the client sent EOF); reading pauses until they are parsed."""
        if self.discarding:
            if not data:
                self.lost.set()
            return
        self.http.receive_data(data)
        if data:
            self.transport.pause_reading()
        self.readable.set()

    def connection_lost(self) -> None:
        self.lost.set()
        self.readable.set()
        self.writable.set()

    # -- reading ------------------------------------------------------------------------------
    async def _next_event(self, idle_s: float, deadline: float) -> h11.Event:
        """The next h11 event, waiting at most ``idle_s`` for more bytes and never past
        ``deadline`` (the loop's clock)."""
        loop = asyncio.get_running_loop()
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)
                return event
            if self.lost.is_set():
                raise BodyError(HTTPStatus.BAD_REQUEST, "the client closed the connection")
            self.readable.clear()
            self.transport.resume_reading()
            wait = min(idle_s, deadline - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self.readable.wait(), wait)
            except TimeoutError:
                raise BodyError(HTTPStatus.REQUEST_TIMEOUT, "the request came too slowly") from None

    async def read_body(self, limit: int) -> bytes:
        if self.http.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + BODY_IDLE_S + min(self.declared or limit, limit) / MIN_BODY_BYTES_PER_S
        while True:
            event = await self._next_event(BODY_IDLE_S, deadline)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is larger than this server takes ({limit} bytes)")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                # From here on, what the client sends is dropped, and its leaving is noticed
                # (reading stays on): an answer nobody waits for is not worked on.
                self.body_done = self.discarding = True
                self.transport.resume_reading()
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise BodyError(HTTPStatus.BAD_REQUEST, "the client closed the connection before the end of its request")

    # -- the exchange -------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            answer = await self._answer()
        except MultipleValuesError as error:
            answer = _plain(HTTPStatus.BAD_REQUEST, f"header given more than once: {error}")
        except Exception:
            log.exception("internal error on a request with a body")
            answer = _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")
        try:
            await self._respond(answer)
            if not self.body_done and not self.lost.is_set():
                await self._linger()
        except (ConnectionError, h11.LocalProtocolError, Stalled):
            pass
        except Exception:
            log.exception("internal error answering a request with a body")
        finally:
            self.transport.close()

    async def _linger(self) -> None:
        """Say the answer is complete, then drop what the client still sends (see LINGER_S)."""
        self.discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        try:
            await asyncio.wait_for(self.lost.wait(), LINGER_S)
        except TimeoutError:
            self.transport.abort()

    async def _answer(self) -> Answer:
        cap = self.state.connection_cap
        if cap and self.state.sockets > cap:
            return _plain(HTTPStatus.SERVICE_UNAVAILABLE, "the server has as many connections as it can hold; retry later")
        try:
            head = await self._next_event(OPENING_TIMEOUT_S, self.head_deadline)
        except h11.RemoteProtocolError as error:
            return _plain(HTTPStatus(error.error_status_hint), f"bad request: {error}")
        except BodyError as error:
            return _plain(error.status, error.message)
        assert isinstance(head, h11.Request)
        self.declared = next((int(value) for name, value in head.headers if name == b"content-length"), None)
        path = head.target.decode("ascii", errors="replace")
        headers = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers.raw_items()])
        peer = self.transport.get_extra_info("peername")
        request = BodyRequest(self, head.method.decode("ascii", errors="replace"), path, headers, str(peer[0]) if peer else "")
        handler = self.routes.get(path.split("?", 1)[0])
        if handler is None:
            return _plain(HTTPStatus.NOT_FOUND, f"nothing takes {request.method} at {path.split('?', 1)[0][:200]}")
        try:
            return await handler(self.state, request)
        except h11.RemoteProtocolError as error:
            return _plain(HTTPStatus(error.error_status_hint), f"bad request: {error}")

    def _send(self, event: h11.Event) -> None:
        data = self.http.send(event)
        if data and not self.lost.is_set():
            self.transport.write(data)

    async def _respond(self, answer: Answer) -> None:
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # IDLE: the head itself was bad
            return
        headers = [("Content-Type", answer.content_type), ("Cache-Control", "no-store"), ("Connection", "close"),
                   ("Server", "FlashCaption"), *answer.headers]
        whole = isinstance(answer.body, bytes)
        if isinstance(answer.body, bytes):
            headers.append(("Content-Length", str(len(answer.body))))
        status = HTTPStatus(answer.status)
        self._send(h11.Response(status_code=status.value, headers=headers, reason=status.phrase))
        if isinstance(answer.body, bytes):
            self._send(h11.Data(data=answer.body))
        else:
            try:
                async for chunk in answer.body:
                    if self.lost.is_set():
                        break
                    self._send(h11.Data(data=chunk))
                    await self._drained()
            finally:
                await answer.body.aclose()  # a client that left ends the stream's work now
        if whole or not self.lost.is_set():
            self._send(h11.EndOfMessage())
            await self._drained()

    async def _drained(self) -> None:
        """Wait until the socket takes what was written; a client that takes nothing for
        ``send_stall_s`` is cut off (Stalled), as WebSocket clients are."""
        try:
            await asyncio.wait_for(self.writable.wait(), self.state.config.send_stall_s)
        except TimeoutError:
            log.info("closing a client that stopped reading its answer for %g s", self.state.config.send_stall_s)
            self.transport.abort()
            raise Stalled from None


def _plain(status: HTTPStatus, message: str) -> Answer:
    return Answer(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8")


class FrontConnection(ServerConnection):
    """websockets' connection, which looks at the request line first (see the module)."""

    server_state: ClassVar[ServerState]
    routes: ClassVar[dict[str, Handler]]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.server_state.sockets += 1  # counted against the connection cap until connection_lost
        self._front_transport = transport
        self._head = bytearray()
        self._websocket = False
        self._exchange: _Exchange | None = None
        self._opening = asyncio.get_running_loop().call_later(OPENING_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._websocket:
            super().data_received(data)
            return
        if self._exchange is not None:
            self._exchange.feed(data)
            return
        self._head += data
        if b"\n" not in self._head and len(self._head) < MAX_REQUEST_LINE:
            return
        self._opening.cancel()
        head, self._head = bytes(self._head), bytearray()
        if head.startswith(b"POST "):
            self._exchange = _Exchange(self.server_state, self.routes, self._front_transport)
            self._exchange.feed(head)
        else:
            self._websocket = True
            super().connection_made(self._front_transport)
            super().data_received(head)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # True keeps a half-closed request open to answer
        if self._websocket:
            return super().eof_received()
        if self._exchange is not None:
            self._exchange.feed(b"")
            # Kept open to answer a client that half-closed (TLS cannot half-close: it closes).
            return self._front_transport.get_extra_info("sslcontext") is None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.sockets -= 1
        self._opening.cancel()
        if self._websocket:
            super().connection_lost(exc)
        elif self._exchange is not None:
            self._exchange.connection_lost()

    def pause_writing(self) -> None:
        if self._websocket:
            super().pause_writing()
        elif self._exchange is not None:
            self._exchange.writable.clear()

    def resume_writing(self) -> None:
        if self._websocket:
            super().resume_writing()
        elif self._exchange is not None:
            self._exchange.writable.set()


def front_connection(state: ServerState, routes: dict[str, Handler]) -> type[FrontConnection]:
    """The connection class of ``state``'s server, which answers requests with a body on ``routes``
    (path: handler)."""
    return type("Front", (FrontConnection,), {"server_state": state, "routes": routes})
