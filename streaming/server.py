"""The WebSocket and HTTP shell around sessions, the engine and rooms: glue only.

Routes: ``/v1/publish`` and ``/v1/captions`` (WebSocket, protocol v1), ``/healthz``, and the
pages in ``web/``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import signal
import ssl
import time
import uuid
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from importlib import resources
from typing import Any, TypeVar

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from decoder.api import SpeechModel
from decoder.context import Context, context_from_json, context_to_json
from streaming import auth, protocol
from streaming.audio import PcmDecoder
from streaming.config import ServerConfig
from streaming.engine import Engine
from streaming.protocol import EndMessage, FlushMessage, ProtocolError
from streaming.export import CONTENT_TYPES, render
from streaming.journal import Journal
from streaming.metrics import Metrics
from streaming.rooms import Room, Rooms
from streaming.session import Session

log = logging.getLogger(__name__)

# Hard cap enforced by websockets itself; our own, clearer limits (1 s of audio, 64 KiB of
# text) are checked first on anything below it.
WEBSOCKET_MAX_MESSAGE = 4 * 1024 * 1024
# Pages and the files they load, all from the `web` package: no build step, nothing external.
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/capture": "capture.html", "/transcript": "transcript.html"}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_STATIC = re.compile(r"/static/([a-z0-9-]{1,40}\.(?:js|css))")
# Pages run only their own scripts and talk only to this server.
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors *"
)
_TRANSCRIPT = re.compile(r"/v1/rooms/([A-Za-z0-9_-]{1,64})/transcript")
_ROOM = re.compile(r"/v1/rooms/([A-Za-z0-9_-]{1,64})")


class _Refused(Exception):
    """Raised to end a connection after its error message went out."""

    def __init__(self, error: ProtocolError):
        self.error = error


@dataclass
class _Publisher:
    id: str
    params: protocol.PublishParams
    session: Session
    room: Room
    connection: ServerConnection
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task | None = None
    started_wall: float = field(default_factory=time.time)  # Unix time of session clock 0
    parking: bool = False  # the connection dropped: finish what was heard, then wait for a resume

    @property
    def log_extra(self) -> dict[str, str]:
        return {"session": self.id, "room": self.room.name}


T = TypeVar("T")


def _room_setting(settings: dict[str, T], room: str) -> T | None:
    """An operator's per-room setting: the room's own, else the one for every room ("*")."""
    return settings.get(room) or settings.get("*")


class CaptionServer:
    def __init__(self, config: ServerConfig, model: SpeechModel, lean_model: SpeechModel | None = None):
        self.config = config
        self.model = model
        for room, codes in config.room_languages.items():
            missing = [code for code in codes if code not in model.languages]
            if missing:
                raise ValueError(f"--room-languages {room}: model {model.name} does not support {', '.join(missing)}")
        self.engine = Engine(
            model,
            workers=config.workers,
            max_queued=config.max_queued_decodes,
            delay_s=config.decode_delay_s,
            lean_model=lean_model,
            max_wait_s=config.max_decode_wait_s,
        )
        self.rooms = Rooms(Journal(config.data_dir / "journal.sqlite3"), config.viewer_queue)
        self.publishers: dict[str, _Publisher] = {}
        self._parked: dict[str, tuple[_Publisher, asyncio.TimerHandle]] = {}
        self._retention: asyncio.Task | None = None
        self.metrics = Metrics()
        self._per_ip: collections.Counter[str] = collections.Counter()
        if config.auth not in ("auto", "on", "off"):
            raise ValueError("auth must be auto, on or off")
        self.auth = config.auth == "on" or (config.auth == "auto" and not auth.is_loopback(config.host))
        self._secret = auth.load_secret(config.data_dir, config.secret_file) if self.auth else b""
        self.viewer_count = 0
        self._server: Server | None = None
        self._draining = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> int:
        """Start listening; returns the port (useful with port 0)."""
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
            server_header="FlashCaption",
            ssl=tls,
            # Non-browser clients send no Origin and are always let in.
            origins=[*self.config.allow_origins, None] if self.config.allow_origins else None,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        log.info(
            "access control %s%s", "on" if self.auth else "off",
            " (auto: not loopback)" if self.config.auth == "auto" and self.auth
            else " (auto: loopback only)" if self.config.auth == "auto" else "",
        )
        if self.config.retain_days is not None:
            self._retention = asyncio.create_task(self._expire_finals())
        scheme = "wss" if tls else "ws"
        log.info("listening on %s://%s:%d (model %s)", scheme, self.config.host, port, self.model.name)
        return port

    async def shutdown(self) -> None:
        """Stop taking connections, finalise every open utterance, deliver, then close."""
        self._draining = True
        if self._retention is not None:
            self._retention.cancel()
        for _, timer in self._parked.values():
            timer.cancel()  # parked sessions have nothing left to finalise
        self._parked.clear()
        if self._server is not None:
            self._server.close(close_connections=False)
        publishers = list(self.publishers.values())
        for publisher in publishers:
            if not publisher.session.finished:
                publisher.session.end()
                publisher.wake.set()
        pumps = [p.pump for p in publishers if p.pump is not None]
        if pumps:
            done, pending = await asyncio.wait(pumps, timeout=self.config.shutdown_grace_s)
            if pending:
                log.warning("shutdown: %d sessions did not finish in time", len(pending))
        if self._server is not None:
            for connection in list(self._server.connections):
                await connection.close(1001, "server shutting down")
            await self._server.wait_closed()
        self.engine.close()
        self.rooms.close()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: finalising open utterances")
        await self.shutdown()

    # -- HTTP --------------------------------------------------------------------------------
    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            route, query = protocol.split_path(request.path)
        except ProtocolError as error:
            return _response(HTTPStatus.BAD_REQUEST, error.message)
        transcript = _TRANSCRIPT.fullmatch(route)
        room = _ROOM.fullmatch(route)
        try:
            if transcript:
                self._authorize(request, query, transcript.group(1), "view")
                return await self._transcript(transcript.group(1), query)
            if room and request.method == "DELETE":
                self._authorize(request, query, room.group(1), "admin")
                return await self._delete_room(room.group(1))
        except ProtocolError as error:
            return _response(HTTPStatus.UNAUTHORIZED, error.message)
        if request.method != "GET":
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not supported here")
        if route in ("/v1/publish", "/v1/captions"):
            if "upgrade" not in request.headers.get("Connection", "").lower():
                return _response(HTTPStatus.UPGRADE_REQUIRED, f"{route} is a WebSocket endpoint")
            return None
        if route == "/healthz":
            return _response(HTTPStatus.OK, json.dumps(self.health()), "application/json")
        if route == "/readyz":
            ready = not self._draining and not self.engine.overloaded
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, json.dumps({"ready": ready}), "application/json")
        if route == "/metrics":
            return _response(HTTPStatus.OK, self.prometheus(), "text/plain; version=0.0.4; charset=utf-8")
        if route in PAGES:
            page = resources.files("web").joinpath(PAGES[route]).read_text(encoding="utf-8")
            response = _response(HTTPStatus.OK, page, "text/html; charset=utf-8")
            response.headers["Content-Security-Policy"] = PAGE_POLICY
            return response
        static = _STATIC.fullmatch(route)
        if static and resources.files("web").joinpath(static.group(1)).is_file():
            name = static.group(1)
            body = resources.files("web").joinpath(name).read_text(encoding="utf-8")
            return _response(HTTPStatus.OK, body, STATIC_TYPES[name[name.rindex("."):]])
        return _response(HTTPStatus.NOT_FOUND, "not found")

    async def _transcript(self, room: str, query: dict[str, str]) -> Response:
        format, clock = query.get("format", "json"), query.get("clock", "wall")
        try:
            body = render(await self.rooms.transcript(room), format, clock)
        except ValueError as error:
            return _response(HTTPStatus.BAD_REQUEST, str(error))
        return _response(HTTPStatus.OK, body, CONTENT_TYPES[format])

    async def _delete_room(self, room: str) -> Response:
        deleted = await self.rooms.delete(room)
        if deleted is None:
            return _response(HTTPStatus.CONFLICT, f"room {room} has publishers or viewers connected")
        log.info("room deleted with %d finals", deleted, extra={"room": room})
        return _response(HTTPStatus.OK, json.dumps({"room": room, "deleted_finals": deleted}), "application/json")

    async def _expire_finals(self) -> None:
        """Retention: every hour, drop finals older than --retain-days."""
        while True:
            cutoff = time.time() - self.config.retain_days * 86400
            deleted = await self.rooms.expire(cutoff)
            if deleted:
                log.info("retention: deleted %d finals older than %g days", deleted, self.config.retain_days)
            await asyncio.sleep(3600)

    def prometheus(self) -> str:
        stats = self.engine.stats
        rooms = list(self.rooms)
        return self.metrics.render(
            gauges={
                "flashcaption_publishers": ("Publishers connected.", len(self.publishers)),
                "flashcaption_sessions_resumable": ("Sessions waiting for their publisher to resume.", len(self._parked)),
                "flashcaption_viewers": ("Viewers connected.", self.viewer_count),
                "flashcaption_rooms": ("Rooms in memory.", len(rooms)),
                "flashcaption_decode_queue": ("Decodes waiting or running.", stats.queued),
                "flashcaption_decode_wait_seconds": ("Smoothed time decodes wait for a free worker.", stats.recent_wait()),
                "flashcaption_real_time_factor": (
                    "Decode compute seconds per second of audio decoded.", stats.real_time_factor or 0.0
                ),
            },
            counters={
                "flashcaption_decodes_total": ("Decodes run.", stats.decodes),
                "flashcaption_decode_failures_total": ("Decodes that raised.", stats.failures),
                "flashcaption_decoded_audio_seconds_total": ("Audio decoded, re-decodes included.", stats.audio_seconds),
                "flashcaption_decode_compute_seconds_total": ("Compute spent decoding.", stats.compute_seconds),
            },
        )

    def health(self) -> dict[str, Any]:
        stats = self.engine.stats
        return {
            "status": "draining" if self._draining else "ok",
            "model": self.model.name,
            "device": str(getattr(self.model, "device", "cpu")),
            "final_beam_size": self.config.session.final_beam_size,
            "publishers": len(self.publishers),
            "viewers": self.viewer_count,
            "decode_queue": stats.queued,
            "decode_wait_s": round(stats.recent_wait(), 3),
            "real_time_factor": round(stats.real_time_factor, 4) if stats.real_time_factor is not None else None,
        }

    # -- WebSocket ---------------------------------------------------------------------------
    async def _route(self, connection: ServerConnection) -> None:
        route, query = "", {}
        address = connection.remote_address[0] if connection.remote_address else ""
        self._per_ip[address] += 1
        try:
            limit = self.config.max_connections_per_ip
            if limit and self._per_ip[address] > limit:
                raise ProtocolError("overloaded", f"too many connections from your address (at most {limit})")
            route, query = protocol.split_path(connection.request.path)
            if route == "/v1/publish":
                await self._publish(connection, query)
            elif route == "/v1/captions":
                await self._view(connection, query)
        except _Refused as refused:
            await _send_error(connection, refused.error, close=True, metrics=self.metrics)
        except ProtocolError as error:
            await _send_error(connection, error, close=True, metrics=self.metrics)
        except websockets.ConnectionClosed:
            pass
        except Exception:
            log.exception("internal error on %s", route)
            await _send_error(connection, ProtocolError("internal", "internal server error"), close=True, metrics=self.metrics)
        finally:
            self._per_ip[address] -= 1
            if not self._per_ip[address]:
                del self._per_ip[address]

    async def _publish(self, connection: ServerConnection, query: dict[str, str]) -> None:
        params = protocol.parse_publish(query)
        if self._draining:
            raise ProtocolError("overloaded", "server is shutting down")
        if params.resume is not None:
            parked = self._parked.get(params.resume)
            earlier = parked[0].room.name if parked else (await self.rooms.last_of_session(params.resume) or {}).get("room")
            self._authorize(connection.request, query, earlier or params.room, "publish")
            publisher = self._unpark(params.resume, query.get("room")) or await self._revive(params, query, connection)
            publisher.connection = connection
            # This connection's audio format and mode; the session's speaker.
            publisher.params = replace(params, speaker=publisher.params.speaker)
        else:
            self._authorize(connection.request, query, params.room, "publish")
            room = await self.rooms.get(params.room)
            limit = self.config.max_publishers_per_room
            if limit and room.publishers >= limit:
                raise ProtocolError("overloaded", f"room {params.room} has the most publishers allowed ({limit})")
            if self.engine.overloaded:
                raise ProtocolError("overloaded", "server is at capacity; try again later")
            language = self._language(params.language, params.languages or self._room_languages(params.room)) or self._default_language()
            publisher = _Publisher(
                id=uuid.uuid4().hex[:12],
                params=params,
                session=Session(self.config.session, language=language, context=params.context or self._room_context(params.room)),
                room=room,
                connection=connection,
            )
            publisher.room.publishers += 1
            await self._keep_settings(publisher, params.context)
        pcm = PcmDecoder(params.encoding, params.sample_rate)
        self.publishers[publisher.id] = publisher
        publisher.pump = asyncio.create_task(self._pump(publisher))
        log.info(
            "publisher %s (%s, %d Hz)", "resumed" if params.resume else "joined", params.encoding, params.sample_rate,
            extra=publisher.log_extra,
        )
        ended = False
        try:
            await connection.send(
                protocol.encode(
                    protocol.ready(publisher.id, publisher.room.name, self.model.name, publisher.session.language, params.sample_rate)
                )
            )
            ended = await self._receive(publisher, pcm)
        except _Refused:
            ended = True  # refused for breaking the protocol: not resumable
            raise
        finally:
            await self._after_connection(publisher, pcm, ended)
        await connection.close(1000, "end of stream")

    async def _after_connection(self, publisher: _Publisher, pcm: PcmDecoder, ended: bool) -> None:
        """Whatever ended the connection, the utterance in progress is finalised and its final
        reaches the room. A dropped connection parks the session for resumption."""
        session = publisher.session
        del self.publishers[publisher.id]
        if not session.ending:
            session.receive_audio(pcm.finish())
            if ended or self._draining:
                session.end()
            else:
                session.flush()
                publisher.parking = True
        publisher.wake.set()
        await asyncio.shield(publisher.pump)
        if session.finished:
            publisher.room.publishers -= 1
            if not self._draining:  # a drained session may still be resumed after the restart
                await self.rooms.end_session(publisher.id)
            log.info("publisher left", extra=publisher.log_extra)
        else:
            publisher.parking = False
            timer = asyncio.get_running_loop().call_later(self.config.resume_grace_s, self._expire, publisher.id)
            self._parked[publisher.id] = (publisher, timer)
            log.info("publisher dropped; resumable for %.0f s", self.config.resume_grace_s, extra=publisher.log_extra)

    def _unpark(self, session_id: str, room: str | None) -> _Publisher | None:
        parked = self._parked.get(session_id)
        if parked is None:
            return None
        publisher, timer = parked
        if room is not None and room != publisher.room.name:
            raise ProtocolError("bad_request", f"session {session_id} belongs to room {publisher.room.name}, not {room}")
        timer.cancel()
        del self._parked[session_id]
        # The audio clock stood still while the connection was down; the wall clock did not.
        publisher.started_wall = time.time() - publisher.session.received_seconds
        return publisher

    async def _revive(self, params: protocol.PublishParams, query: dict[str, str], connection: ServerConnection) -> _Publisher:
        """Resume a session this process never held (the server restarted): its room, speaker,
        segment numbering and audio clock come from its latest final in the journal."""
        last = await self.rooms.last_of_session(params.resume)
        if last is None or time.time() - last["written"] > self.config.resume_grace_s or self._draining:
            raise ProtocolError("bad_request", f"no session {params.resume} to resume (unknown, ended, or its grace period passed)")
        if "room" in query and query["room"] != last["room"]:
            raise ProtocolError("bad_request", f"session {params.resume} belongs to room {last['room']}, not {query['room']}")
        # What the session asked for (a journal older than that table has only its last final).
        settings = await self.rooms.session_settings(params.resume) or {}
        own_context = params.context or (context_from_json(settings["context"]) if settings.get("context") else None)
        asked = settings.get("language") or last["language"]
        requested, candidates = (None, tuple(asked.split(","))) if "," in asked else (asked, ())
        try:
            language = self._language(requested, candidates)
        except ProtocolError:
            # The server came back with a model that lacks the language: its default, said so.
            log.warning("resumed session asked for %s, which model %s lacks", asked, self.model.name)
            language = self._default_language()
        session = Session(
            self.config.session,
            language=language,
            context=own_context or self._room_context(last["room"]),
            first_segment=last["segment"] + 1,
            clock_offset_s=last["end"],
            last_language=last["language"],
        )
        publisher = _Publisher(
            id=params.resume,
            params=replace(params, speaker=last["speaker"]),
            session=session,
            room=await self.rooms.get(last["room"]),
            connection=connection,
        )
        publisher.started_wall = time.time() - last["end"]
        publisher.room.publishers += 1
        await self._keep_settings(publisher, own_context)
        return publisher

    async def _keep_settings(self, publisher: _Publisher, own_context: Context | None) -> None:
        """Journal the session's language and the publisher's own context (None: unchanged),
        so that a session resumed after a restart goes on as it was."""
        context = context_to_json(own_context) if own_context else None
        await self.rooms.keep_session(publisher.id, publisher.room.name, publisher.session.language, context)

    def _expire(self, session_id: str) -> None:
        publisher, _ = self._parked.pop(session_id)
        publisher.session.end()
        publisher.room.publishers -= 1
        asyncio.ensure_future(self.rooms.end_session(session_id))
        log.info("resumable session expired", extra=publisher.log_extra)

    def _authorize(self, request: Request, query: dict[str, str], room: str, action: str) -> None:
        """Raise ``unauthorized`` unless the request's token allows ``action`` in ``room``."""
        if not self.auth or (action == "view" and self.config.public_rooms):
            return
        token = query.get("token")
        bearer = request.headers.get("Authorization", "")
        if token is None and bearer.lower().startswith("bearer "):
            token = bearer[7:].strip()
        try:
            if not token:
                raise auth.Unauthorized("a token is required (token= or Authorization: Bearer)")
            auth.check(auth.verify_token(self._secret, token), room, action)
        except auth.Unauthorized as error:
            log.warning("refused to %s: %s", action, error, extra={"room": room})  # never the token
            raise ProtocolError("unauthorized", str(error)) from None

    def _default_language(self) -> str:
        """Multilingual models detect the language of each utterance unless told."""
        return self.model.languages[0] if len(self.model.languages) == 1 else "auto"

    def _room_languages(self, room: str) -> tuple[str, ...]:
        """The room's language candidates (--room-languages), for publishers that name none."""
        return _room_setting(self.config.room_languages, room) or ()

    def _room_context(self, room: str) -> Context | None:
        """The room's default context (--context-file), for publishers that give none."""
        return _room_setting(self.config.room_contexts, room)

    def _language(self, requested: str | None, candidates: tuple[str, ...] = ()) -> str | None:
        """What sessions ask the model for: a language it can do, "auto", or candidates to
        detect among ("en,zh"); a bad_request for a language the model lacks."""
        supported = self.model.languages
        for code in (*candidates, *([requested] if requested not in (None, "auto") else [])):
            if code not in supported:
                listed = ", ".join(supported) if len(supported) < 12 else f"{len(supported)} languages, e.g. {', '.join(supported[:12])}"
                raise ProtocolError("bad_request", f"model {self.model.name} does not support language {code!r} (supports: {listed})")
        if requested is None and not candidates:
            return None
        if requested not in (None, "auto"):
            return requested
        if len(supported) == 1:
            return supported[0]
        return ",".join(candidates) if len(candidates) > 1 else (candidates[0] if candidates else "auto")

    async def _receive(self, publisher: _Publisher, pcm: PcmDecoder) -> bool:
        """Feed the session until ``end`` (returns True) or the connection closes (False)."""
        session = publisher.session
        live = publisher.params.mode == "live"
        started, audio_seconds = time.monotonic(), 0.0
        while True:
            try:
                message = await asyncio.wait_for(publisher.connection.recv(), self.config.idle_timeout_s or None)
            except asyncio.TimeoutError:
                raise _Refused(ProtocolError("bad_request", f"no audio or message for {self.config.idle_timeout_s:g} s")) from None
            except websockets.ConnectionClosedOK:
                return False
            try:
                if isinstance(message, bytes):
                    samples = pcm.decode(message)
                    session.receive_audio(samples)
                    publisher.wake.set()
                    audio_seconds += len(samples) / 16000
                    ahead = audio_seconds - (time.monotonic() - started) - self.config.audio_burst_s
                    if live and ahead > 0:
                        # Faster than real time beyond the burst: read this socket later, so
                        # TCP slows the sender down instead of the server doing its work early.
                        await asyncio.sleep(ahead)
                else:
                    command = protocol.parse_client_message(message)
                    if isinstance(command, EndMessage):
                        session.receive_audio(pcm.finish())
                        session.end()
                        publisher.wake.set()
                        return True
                    if isinstance(command, FlushMessage):
                        session.flush()
                    else:
                        session.configure(language=self._language(command.language), context=command.context)
                        await self._keep_settings(publisher, command.context)
            except ProtocolError as error:
                if error.code == "too_large":
                    raise _Refused(error) from None
                # Other mistakes are reported and the stream goes on: captions are not lost
                # over one bad message.
                await _send_error(publisher.connection, error, close=False, metrics=self.metrics)
            publisher.wake.set()

    async def _pump(self, publisher: _Publisher) -> None:
        """Runs a session's decodes, one at a time, and delivers its captions."""
        session = publisher.session
        while True:
            await publisher.wake.wait()
            publisher.wake.clear()
            while (request := session.next_request()) is not None:
                try:
                    hypothesis, seconds = await self.engine.decode(request)
                except Exception:
                    log.exception("decode failed", extra=publisher.log_extra)
                    session.receive_failure(request.id)
                else:
                    session.receive_hypothesis(request.id, hypothesis, seconds)
                await self._deliver(publisher)
            await self._deliver(publisher)  # audio alone can complete a final (decoded early)
            if session.finished or (publisher.parking and session.idle):
                return

    async def _deliver(self, publisher: _Publisher) -> None:
        for event in publisher.session.events():
            message = protocol.caption(event, publisher.room.name, publisher.id, publisher.params.speaker)
            if message["type"] == "final":
                audio_end = publisher.started_wall + event.end
                message = await self.rooms.publish_final(publisher.room, message, publisher.started_wall + event.start, audio_end)
                self.metrics.final_latency.observe(max(0.0, time.time() - audio_end))
            else:
                self.rooms.publish_partial(publisher.room, message)
            try:
                await publisher.connection.send(protocol.encode(message))
            except websockets.ConnectionClosed:
                pass  # the publisher left; the room still gets every caption

    async def _view(self, connection: ServerConnection, query: dict[str, str]) -> None:
        params = protocol.parse_view(query)
        self._authorize(connection.request, query, params.room, "view")
        limit = self.config.max_viewers_per_room
        if limit and len((await self.rooms.get(params.room)).viewers) >= limit:
            raise ProtocolError("overloaded", f"room {params.room} has the most viewers allowed ({limit})")
        viewer, backlog, last_seq = await self.rooms.join_viewer(params.room, params.since)
        def drop() -> None:
            self.metrics.dropped_viewers += 1
            asyncio.ensure_future(connection.close(1013, "viewer too slow; reconnect with since"))

        viewer.on_drop = drop
        self.viewer_count += 1
        try:
            await connection.send(
                protocol.encode(
                    {**protocol.ready(uuid.uuid4().hex[:12], params.room, self.model.name, self._default_language()), "seq": last_seq}
                )
            )
            for message in backlog:
                await connection.send(protocol.encode(message))
            sender = asyncio.create_task(self._send_to_viewer(connection, viewer))
            receiver = asyncio.create_task(_ignore_incoming(connection))
            done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() and not isinstance(task.exception(), websockets.ConnectionClosed):
                    raise task.exception()
        finally:
            self.rooms.leave_viewer(params.room, viewer)
            self.viewer_count -= 1

    @staticmethod
    async def _send_to_viewer(connection: ServerConnection, viewer) -> None:
        while True:
            message = await viewer.queue.get()
            await connection.send(protocol.encode(message))


async def _ignore_incoming(connection: ServerConnection) -> None:
    """Viewers send nothing we act on; reading notices when they go away."""
    async for _ in connection:
        pass


async def _send_error(connection: ServerConnection, error: ProtocolError, close: bool, metrics: Metrics | None = None) -> None:
    if metrics is not None:
        metrics.errors[error.code] += 1
    try:
        await connection.send(protocol.encode(protocol.error(error.code, error.message)))
        if close:
            await connection.close(error.close_code, error.message[:120])
    except websockets.ConnectionClosed:
        pass


def _response(status: HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode("utf-8")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, data)
