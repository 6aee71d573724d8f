"""Plain HTTP routes: the pages in ``web/``, health and metrics, and room transcripts
(export, delete). A new HTTP endpoint is one more branch in :func:`handle`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from decoder.batching import ComputeLane
from streaming.access import origin_allowed
from streaming.compat import routes
from streaming.compat.wire import HandshakeError
from streaming.export import CONTENT_TYPES, check, render, shadowed, translated
from streaming.metrics import labels
from streaming.protocol import ProtocolError, split_path
from streaming.server import nodes
from streaming.server.connection import Client, client_of, response

if TYPE_CHECKING:
    from streaming.engine import Engine
    from streaming.server.state import ServerState

log = logging.getLogger(__name__)

# Pages and the files they load, all from the `web` package: no build step, nothing external.
PAGES = {
    "/": "index.html", "/overlay": "overlay.html", "/capture": "capture.html", "/transcript": "transcript.html", "/editor": "editor.html",
    "/compare": "compare.html",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_STATIC = re.compile(r"/static/([a-z0-9-]{1,40}\.(?:js|css))")
# Pages run only their own scripts and talk only to this server.
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors *"
)
_TRANSCRIPT = re.compile(r"/v1/rooms/([A-Za-z0-9_-]{1,64})/transcript")
_ROOM = re.compile(r"/v1/rooms/([A-Za-z0-9_-]{1,64})")
WEBSOCKET_ROUTES = ("/v1/publish", "/v1/captions")


async def handle(server: ServerState, connection: ServerConnection, request: Request) -> Response | None:
    """The response to an HTTP request; None for a WebSocket upgrade on a WebSocket route."""
    if routes.route_of(request.path) in routes.PATHS:
        return _compat_handshake(server, connection, request)
    try:
        route, query = split_path(request.path)
    except ProtocolError as error:
        return response(HTTPStatus.BAD_REQUEST, error.message)
    client = client_of(connection, request.headers, query, server.trusted)
    transcript = _TRANSCRIPT.fullmatch(route)
    room = _ROOM.fullmatch(route)
    try:
        if transcript:
            server.access.authorize(client.token, transcript.group(1), "view", client.forwarded)
            return await _transcript(server, transcript.group(1), query, client)
        if room and request.method == "DELETE":
            server.access.authorize(client.token, room.group(1), "delete", client.forwarded)
            return await _delete_room(server, room.group(1))
    except ProtocolError as error:
        return response(HTTPStatus.UNAUTHORIZED, error.message)
    if request.method != "GET":
        return response(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not supported here")
    if route in WEBSOCKET_ROUTES:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return response(HTTPStatus.UPGRADE_REQUIRED, f"{route} is a WebSocket endpoint")
        if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), server.config.allow_origins):
            log.warning("refused a browser page from %s (not this server's; --allow-origin to let it in)", request.headers.get("Origin"))
            return response(HTTPStatus.FORBIDDEN, "pages from this origin may not connect (the server's --allow-origin)")
        return None
    if route == "/readyz":  # for load balancers: one yes or no, open to all
        store = server.rooms.store.available
        ready = not server.draining and not server.engine.overloaded and store
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return response(status, json.dumps({"ready": ready, "store": "up" if store else "down"}), "application/json")
    if route == "/healthz":
        # Counts and configuration are for the operator: with access control on, only an
        # admin token for every room (--room '*') sees them; others get the status alone.
        figures = health(server)
        if not server.access.allows(client.token, "*", "admin", client.forwarded):
            figures = {"status": figures["status"]}
        return response(HTTPStatus.OK, json.dumps(figures), "application/json")
    if route == "/metrics":
        if not server.access.allows(client.token, "*", "admin", client.forwarded):
            return response(HTTPStatus.UNAUTHORIZED, "metrics need an admin token for every room (token create --room '*' --role admin)")
        return response(HTTPStatus.OK, prometheus(server), "text/plain; version=0.0.4; charset=utf-8")
    if route in PAGES:
        page = resources.files("web").joinpath(PAGES[route]).read_text(encoding="utf-8")
        answer = response(HTTPStatus.OK, page, "text/html; charset=utf-8")
        answer.headers["Content-Security-Policy"] = PAGE_POLICY
        return answer
    static = _STATIC.fullmatch(route)
    if static and resources.files("web").joinpath(static.group(1)).is_file():
        name = static.group(1)
        body = resources.files("web").joinpath(name).read_text(encoding="utf-8")
        return response(HTTPStatus.OK, body, STATIC_TYPES[name[name.rindex(".") :]])
    return response(HTTPStatus.NOT_FOUND, "not found")


async def _transcript(server: ServerState, room: str, query: dict[str, str], client: Client) -> Response:
    """A room's transcript, read and rendered off the event loop; at most ``max_exports`` at
    once (each holds its room's whole transcript while it is made), others are told to retry."""
    format, clock = query.get("format", "json"), query.get("clock", "wall")
    try:
        check(format, clock)
    except ValueError as error:
        return response(HTTPStatus.BAD_REQUEST, str(error))
    if server.exports.locked():
        answer = response(HTTPStatus.SERVICE_UNAVAILABLE, "other exports are being made; retry in a few seconds")
        answer.headers["Retry-After"] = "5"
        return answer
    history = query.get("revisions", "0")
    if history not in ("0", "1"):
        return response(HTTPStatus.BAD_REQUEST, "revisions must be 0 or 1 (1: JSON with every correction)")
    if history == "1" and format != "json":
        return response(HTTPStatus.BAD_REQUEST, "revisions=1 takes format=json")
    # Who may see a room as its editors do: finals still held back for review, and what the
    # text was before each correction, are theirs alone.
    editor = server.access.allows(client.token, room, "edit", client.forwarded)
    if history == "1" and not editor:
        return response(HTTPStatus.UNAUTHORIZED, "revisions=1 needs a token that may edit the room (role edit or admin)")
    upto = None if editor or not server.settings.review_delay(room) else (await server.rooms.get(room)).released_seq
    lang = query.get("lang", "original")
    if lang not in ("original", *server.settings.translation_targets):
        targets = ", ".join(server.settings.translation_targets) or "none"
        return response(HTTPStatus.BAD_REQUEST, f"lang must be original or a language finals are translated into here ({targets})")
    shadow = query.get("shadow")
    if shadow is not None and (lang != "original" or shadow not in server.shadow_models):
        known = ", ".join(server.shadow_models) or "none"
        return response(HTTPStatus.BAD_REQUEST, f"shadow must name a shadow model of this server ({known}), without lang")
    async with server.exports:
        rows = translated(await server.rooms.transcript(room, upto), await server.rooms.all_translations(room, upto), lang)
        rows = shadowed(rows, await server.rooms.all_shadows(room, upto), shadow)
        revisions = await server.rooms.revisions(room) if format == "json" and lang == "original" and shadow is None else None
        body = await asyncio.to_thread(render, rows, format, clock, revisions, history == "1")
    return response(HTTPStatus.OK, body, CONTENT_TYPES[format])


async def _delete_room(server: ServerState, room: str) -> Response:
    if (busy := nodes.occupied_elsewhere(server, room)) is not None:
        return response(HTTPStatus.CONFLICT, f"room {room} has publishers or viewers connected on node {busy}")
    deleted = await server.rooms.delete(room)
    if deleted is None:
        return response(HTTPStatus.CONFLICT, f"room {room} has publishers or viewers connected")
    server.settings.forget(room)
    log.info("room deleted with %d finals", deleted, extra={"room": room})
    return response(HTTPStatus.OK, json.dumps({"room": room, "deleted_finals": deleted}), "application/json")


def _compat_handshake(server: ServerState, connection: ServerConnection, request: Request) -> Response | None:
    """Another service's route (streaming/compat) refuses a bad request before the upgrade, with
    the HTTP status and JSON body that service answers with: its clients read the status, not a
    message after it."""
    request_id = str(uuid.uuid4())
    route = routes.route_of(request.path)
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return response(HTTPStatus.UPGRADE_REQUIRED, f"{route} is a WebSocket endpoint")
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), server.config.allow_origins):
        return response(HTTPStatus.FORBIDDEN, "pages from this origin may not connect (the server's --allow-origin)")
    try:
        params, _ = routes.open_dialect(request.path, connection.id, server.model.name)
        token = params.token or routes.subprotocol_token(request.path, request.headers)
        query = {"token": token} if token else {}
        client = client_of(connection, request.headers, query, server.trusted)
        try:
            server.access.authorize(client.token, params.room, "publish", client.forwarded)
        except ProtocolError as error:
            raise routes.refusal(route, error.message, 401) from None
        if server.draining or server.engine.overloaded:
            raise routes.refusal(route, "the server is at capacity; try again later", 503)
    except HandshakeError as error:
        server.metrics.errors[error.code] += 1
        return response(HTTPStatus(error.status), error.body(request_id), "application/json")
    return None


def prometheus(server: ServerState) -> str:
    stats = server.engine.stats
    return server.metrics.render(
        gauges={
            "flashcaption_publishers": ("Publishers connected.", len(server.sessions.live)),
            "flashcaption_sessions_resumable": ("Sessions waiting for their publisher to resume.", server.sessions.parked_count),
            "flashcaption_viewers": ("Viewers connected.", server.viewer_count),
            "flashcaption_rooms": ("Rooms in memory.", len(list(server.rooms))),
            "flashcaption_decode_queue": ("Decodes waiting or running.", stats.queued),
            "flashcaption_audio_backlog_seconds": (
                "Audio heard but not yet decoded, the most any live session holds.",
                max((p.session.backlog_seconds for p in server.sessions.live.values()), default=0.0),
            ),
            "flashcaption_decode_wait_seconds": ("Smoothed time decodes wait for a free worker.", stats.recent_wait()),
            "flashcaption_real_time_factor": ("Seconds in model calls per second of audio decoded.", model_seconds(server.model.lane, stats.audio_seconds)),
        },
        counters={
            "flashcaption_decodes_total": ("Decodes run.", stats.decodes),
            "flashcaption_decode_failures_total": ("Decodes that raised.", stats.failures),
            "flashcaption_decodes_withdrawn_total": (
                "Partials withdrawn for their stream's final (their decode stops at its next model call).", stats.withdrawn),
            "flashcaption_decoded_audio_seconds_total": ("Audio decoded, re-decodes included.", stats.audio_seconds),
            "flashcaption_decode_compute_seconds_total": ("Wall time of decodes, their waits for the model included.", stats.compute_seconds),
        },
        labelled=model_calls(server.model.lane) | decodes_by_kind(server.engine) | shadow_work(server),
    )


def shadow_work(server: ServerState) -> dict[str, tuple[str, dict[str, float]]]:
    """What each shadow model (serve --shadow) did and gave up."""
    shadows = server.shadows.items()
    return {
        "flashcaption_shadow_skipped_total": (
            "Finals the shadow model did not decode, by shadow model and reason: load (the server's own decoding was overloaded), "
            "backlog (too many were waiting).",
            {labels(model=name, reason=reason): n for name, shadow in shadows for reason, n in shadow.queue.skipped.items()}),
        "flashcaption_shadow_failures_total": ("Shadow decodes that raised, by shadow model.", {labels(model=name): s.failed for name, s in shadows}),
        "flashcaption_shadow_audio_seconds_total": ("Audio the shadow model decoded, by shadow model.",
                                                    {labels(model=name): s.audio_seconds for name, s in shadows}),
        "flashcaption_shadow_compute_seconds_total": (
            "Wall time the shadow model's decodes took in its process (stopped while the server decodes), by shadow model.",
            {labels(model=name): s.compute_seconds for name, s in shadows}),
    }


def decodes_by_kind(engine: Engine) -> dict[str, tuple[str, dict[str, float]]]:
    """Decodes by what they are for (partial, early final, final, tail or head check)."""
    by_kind = engine.decodes_by_kind()
    return {
        "flashcaption_decode_requests_total": ("Decodes run, by kind.", {labels(kind=k): s.decodes for k, s in by_kind.items()}),
        "flashcaption_decode_request_audio_seconds_total": ("Audio decoded, by kind of decode.",
                                                            {labels(kind=k): s.audio_seconds for k, s in by_kind.items()}),
        "flashcaption_decode_request_seconds_total": ("Wall time of decodes, by kind, their waits for the model included.",
                                                      {labels(kind=k): s.compute_seconds for k, s in by_kind.items()}),
    }


def model_seconds(lane: ComputeLane, audio_seconds: float) -> float:
    """Time in model calls per second of audio decoded (not the decodes' wall time, which
    includes their waits for the model)."""
    with lane.snapshot() as stats:
        return sum(c.seconds for c in stats.values()) / audio_seconds if audio_seconds else 0.0


def model_calls(lane: ComputeLane) -> dict[str, tuple[str, dict[str, float]]]:
    """The model's calls by kind (encoder, decoder prompt, decoder step...) and by rows."""
    with lane.snapshot() as stats:
        return {
            "flashcaption_model_calls_total": ("Model calls, by kind.", {labels(kind=k): c.calls for k, c in stats.items()}),
            "flashcaption_model_rows_total": ("Rows computed by model calls (a batch of four steps is one call, four rows).",
                                              {labels(kind=k): c.rows for k, c in stats.items()}),
            "flashcaption_model_compute_seconds_total": ("Time the model spent in calls, by kind.", {labels(kind=k): c.seconds for k, c in stats.items()}),
            "flashcaption_model_wait_seconds_total": ("Time calls waited for their turn on the model, by kind.",
                                                      {labels(kind=k): c.wait_seconds for k, c in stats.items()}),
            "flashcaption_model_batches_total": ("Model calls by kind and number of rows.",
                                                 {labels(kind=k, rows=r): n for k, c in stats.items() for r, n in c.sizes.items()}),
        }


def health(server: ServerState) -> dict[str, Any]:
    stats = server.engine.stats
    return {
        "status": "draining" if server.draining else "ok",
        "model": server.model.name,
        "device": str(getattr(server.model, "device", "cpu")),
        "final_beam_size": server.config.session.final_beam_size,
        "vad": server.config.session.vad.detector,
        "publishers": len(server.sessions.live),
        "viewers": server.viewer_count,
        "decode_queue": stats.queued,
        "decode_wait_s": round(stats.recent_wait(), 3),
        "real_time_factor": round(model_seconds(server.model.lane, stats.audio_seconds), 4) if stats.audio_seconds else None,
        "store": {"kind": "redis" if server.rooms.shared else "sqlite", "up": server.rooms.store.available, "node": server.node,
                  **({"outbox": server.rooms.shared.outbox_count, "url": server.advertise_url} if server.rooms.shared else {})},
    }
