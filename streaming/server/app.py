"""The server's shell: start and stop, and which handler gets a connection.

:class:`CaptionServer` is the shared :class:`~streaming.server.state.ServerState` that listens:
it hands each request to the module for its path: HTTP to :mod:`streaming.server.http`
(requests with a body, through :mod:`streaming.server.front`, to
:mod:`streaming.server.transcribe`), ``/v1/publish`` to :mod:`streaming.server.publish`,
``/v1/captions`` to :mod:`streaming.server.view`; and it runs the registry's sweeps in the background.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import ssl
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from decoder.api import SpeechModel
from streaming.compat import NATIVE, Dialect, openai_files, routes
from streaming.config import ServerConfig
from streaming.protocol import ProtocolError, split_path
from streaming.server import http, nodes, publish, shadows, transcribe, view
from streaming.server.connection import Keepalive, client_of, response, send_error
from streaming.server.front import front_connection
from streaming.server.state import ServerState
from streaming.shadow import ShadowModel
from streaming.store import StoreUnavailable

log = logging.getLogger(__name__)

# Hard cap enforced by websockets itself; our own, clearer limits (1 s of audio, 64 KiB of
# text) are checked first on anything below it.
WEBSOCKET_MAX_MESSAGE = 4 * 1024 * 1024
# Open files kept for everything but connections: journal, model files, threads, logs.
RESERVED_FILES = 128
# A connection refused at the cap is closed this long after its answer.
REFUSED_LINGER_S = 0.5
# How often the list of revoked tokens is read from the store (flashcaption token revoke).
REVOCATIONS_EVERY_S = 2.0
# How often parked sessions are checked for the end of their grace period.
EXPIRY_SWEEP_S = 1.0


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (services often start at 1,024, and
    every connection is a file) and return it. Past it the server could not even accept a
    connection to refuse it, so the connection cap is derived from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, error)
        else:
            log.info("open-files limit raised from %d to %d", soft, hard)
            soft = hard
    else:
        log.info("open-files limit %d", soft)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class CaptionServer(ServerState):
    """The server: :class:`ServerState` plus listening, stopping and routing."""

    def __init__(self, config: ServerConfig, model: SpeechModel, shadow_models: Mapping[str, ShadowModel] | None = None):
        super().__init__(config, model, shadow_models)
        self.rooms.on_terms = lambda room, terms: view.learned(self, room, terms)
        self.rooms.on_release = lambda session: publish.release(self, session)
        self._server: Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> int:
        """Start listening; returns the port (useful with port 0)."""
        if not self.connection_cap:
            self.connection_cap = max(16, raise_open_files_limit() - RESERVED_FILES)
            log.info("at most %d connections at once (from the open-files limit)", self.connection_cap)
        await shadows.start(self, self.shadow_models)  # before the first final: each loads its model
        tls = None
        if self.config.certfile:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await serve(
            self._route,
            self.config.host,
            self.config.port,
            process_request=self._http,
            max_size=WEBSOCKET_MAX_MESSAGE,
            ping_interval=None,  # our own, which knows when the server holds a client back (Keepalive)
            server_header="FlashCaption",
            ssl=tls,
            select_subprotocol=self._subprotocol,
            # Requests with a body (websockets reads none) are served beside it on the same port.
            create_connection=front_connection(self, {openai_files.PATH: transcribe.handle}),
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("%s", self._what_is_open())
        if self.rooms.shared is not None:
            self.advertise_url = self.advertise_url or nodes.advertised_url(self.config.host, port, tls is not None)
            self.rooms.start_sharing()
            self.spawn(nodes.register(self), "node registry")
            log.info("store %s shared with other nodes: this node is %s at %s", self.config.store and self.config.store.split("@")[-1],
                     self.node, self.advertise_url)
        self.spawn(self._expire_parked(), "expire parked sessions")
        self.spawn(self._read_revocations(), "token revocations")
        if self.config.retain_days is not None:
            self.spawn(self._expire_finals(), "retention")
        scheme = "wss" if tls else "ws"
        log.info("listening on %s://%s:%d (model %s)", scheme, self.config.host, port, self.model.name)
        return port

    async def shutdown(self) -> None:
        """Stop taking connections, finalise every open utterance, deliver, then close."""
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        self.sessions.clear_parked()  # parked sessions have nothing left to finalise
        if self._server is not None:
            self._server.close(close_connections=False)
        pumps = publish.end_all(list(self.sessions.live.values()))
        if pumps:
            _, pending = await asyncio.wait(pumps, timeout=self.config.shutdown_grace_s)
            if pending:
                log.warning("shutdown: %d sessions did not finish in time", len(pending))
        if self.exchanges:  # requests with a body: a transcription answers once its session ended
            _, pending = await asyncio.wait(set(self.exchanges), timeout=self.config.shutdown_grace_s)
            for task in pending:
                task.cancel()
        if self._server is not None:
            for connection in list(self._server.connections):
                await connection.close(1001, "server shutting down")
            await self._server.wait_closed()
        self.engine.close()
        await asyncio.to_thread(shadows.close, self)
        self.rooms.close()
        log.info("stopped")

    def _what_is_open(self) -> str:
        """The start-up log's plain word on who may do what."""
        if self.access.required:
            access = "access control on: every request but the pages, /healthz and /readyz needs a token"
        elif self.access.forwarded_required:
            access = (
                "access control off for clients on this machine (--auth auto on loopback), but requests through a proxy "
                "and deleting a room need a token"
            )
        else:
            access = "access control OFF (--auth off): anyone who can reach this server may publish, watch, export and delete rooms"
        allowed = self.config.allow_origins
        origins = "any origin" if "*" in allowed else ", ".join(("this server's own", *allowed))
        return f"{access}; browser pages from {origins} may connect"

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: finalising open utterances")
        await self.shutdown()

    async def _expire_parked(self) -> None:
        """Parked sessions whose grace period passed end for good; now and then, the journal
        forgets what only their resumes could have used (so its tables do not grow for ever)."""
        forgotten_at = time.monotonic()
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            for publisher in self.sessions.expire(time.monotonic()):
                await publish.end_parked(self, publisher, "its grace period passed")
            if time.monotonic() - forgotten_at >= self.config.forget_sessions_every_s:
                forgotten_at = time.monotonic()
                live = [*self.sessions.live, *self.sessions.parked_ids]
                await self.rooms.forget_sessions(time.time() - self.config.resume_grace_s, live)

    async def _read_revocations(self) -> None:
        """The store's list of revoked tokens, read every REVOCATIONS_EVERY_S (every node shares it)."""
        while True:
            try:
                self.access.revoked = await self.rooms.revoked_tokens()
            except Exception as error:  # the store away: the last list read stands
                log.debug("revocation list not read: %s", error)
            await asyncio.sleep(REVOCATIONS_EVERY_S)

    async def _expire_finals(self) -> None:
        """Retention: every hour, drop finals older than --retain-days."""
        assert self.config.retain_days is not None
        while True:
            cutoff = time.time() - self.config.retain_days * 86400
            deleted = await self.rooms.expire(cutoff)
            self.settings.learned = await self.rooms.room_terms()
            if deleted:
                log.info("retention: deleted %d finals older than %g days", deleted, self.config.retain_days)
            await asyncio.sleep(3600)

    # -- routing -----------------------------------------------------------------------------
    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every request first: HTTP routes are answered here; None lets a WebSocket upgrade on."""
        # Every open connection counts, this one included: WebSockets, requests with a body, and
        # connections that have not said what they are yet (server/front.py counts them all).
        if self.connection_cap and self.sockets > self.connection_cap:
            # Answered at once, and the socket let go soon after even if the client keeps it
            # open: refusals must not use up the files that the cap keeps for the others.
            asyncio.get_running_loop().call_later(REFUSED_LINGER_S, connection.transport.abort)
            return response(HTTPStatus.SERVICE_UNAVAILABLE, "the server has as many connections as it can hold; retry later")
        return await http.handle(self, connection, request)

    def _subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        assert connection.request is not None
        chosen = routes.select_subprotocol(connection.request.path, offered)
        return Subprotocol(chosen) if chosen else None

    async def _route(self, connection: ServerConnection) -> None:
        """A WebSocket connection, from handshake to close, on the handler for its path."""
        route, kind, client = "", "", None
        dialect: Dialect = NATIVE
        keepalive = Keepalive(connection, self.config.keepalive_s)
        pings = asyncio.create_task(keepalive.run())
        try:
            assert connection.request is not None
            params, query = None, dict[str, str]()
            route = routes.route_of(connection.request.path)
            if route in routes.PATHS:  # another service's API; its query may repeat a parameter
                params, dialect = routes.open_dialect(connection.request.path, connection.id, self.model.name)
                # A token in its query counts, as on /v1/publish; so does a key sent as subprotocols.
                token = params.token or routes.subprotocol_token(connection.request.path, connection.request.headers)
                query = {"token": token} if token else {}
            else:
                route, query = split_path(connection.request.path)
            client = client_of(connection, connection.request.headers, query, self.trusted)
            kind = "publish" if params is not None else {"/v1/publish": "publish", "/v1/captions": "view"}.get(route, "")
            self.connections.acquire(kind, client.address)
            try:
                if params is not None:
                    await publish.serve_publisher(self, connection, query, client, keepalive, dialect, params)
                elif kind == "publish":
                    await publish.serve_publisher(self, connection, query, client, keepalive)
                elif kind == "view":
                    await view.serve_viewer(self, connection, query, client)
            finally:
                self.connections.release(kind, client.address)
        except ProtocolError as error:
            await send_error(connection, error, close=True, metrics=self.metrics, dialect=dialect)
        except websockets.ConnectionClosed:
            pass
        except StoreUnavailable as error:  # the shared store is away: new rooms, backlogs and revivals wait for it
            log.warning("%s refused: %s", route, error)
            await send_error(connection, ProtocolError("overloaded", "the caption store is unavailable; retry in a few seconds"), close=True,
                             metrics=self.metrics, dialect=dialect)
        except Exception:
            log.exception("internal error on %s", route, extra={"client": client.address if client else ""})
            await send_error(connection, ProtocolError("internal", "internal server error"), close=True, metrics=self.metrics, dialect=dialect)
        finally:
            pings.cancel()
