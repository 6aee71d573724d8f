"""``/v1/captions``: one viewer's connection. It gets ``ready``, the finals it missed (``since``,
read from the journal a page at a time as its socket drains), then the room's captions as
they come, through its bounded queue in the room registry. What one viewer holds is bounded
whatever the room's history: a page of backlog, its queue (events and bytes), the socket's
buffers; a viewer that stops reading is closed after ``send_stall_s`` seconds."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import ServerConnection

from streaming import protocol
from streaming.events import Ready, encode
from streaming.rooms import Viewer
from streaming.server.connection import Client, Stalled, send_within

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from streaming.server.state import ServerState


async def serve_viewer(server: ServerState, connection: ServerConnection, query: dict[str, str], client: Client) -> None:
    params = protocol.parse_view(query)
    server.access.authorize(client.token, params.room, "view", client.forwarded)
    joined = await server.rooms.join_viewer(params.room, server.config.max_viewers_per_room)
    viewer = joined.viewer

    def drop() -> None:
        server.metrics.dropped_viewers += 1
        server.spawn(connection.close(1013, "viewer too slow; reconnect with since"), "close a slow viewer")

    viewer.on_drop = drop
    server.viewer_count += 1
    try:
        ready = Ready(uuid.uuid4().hex[:12], params.room, server.model.name, server.settings.default_language, seq=joined.last_seq)
        await send_within(connection, encode(ready), server.config.send_stall_s, "viewer")
        sender = asyncio.create_task(_send_all(server, connection, viewer, params.room, params.since, joined.last_seq))
        receiver = asyncio.create_task(_ignore_incoming(connection))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, websockets.ConnectionClosed | Stalled):
                raise error
    finally:
        server.rooms.leave_viewer(params.room, viewer)
        server.viewer_count -= 1


async def _send_all(server: ServerState, connection: ServerConnection, viewer: Viewer, room: str, since: int | None, upto: int) -> None:
    """The finals the viewer missed, a page at a time as its socket takes them, then what the
    room sends it live (queued meanwhile)."""
    while since is not None and since < upto:
        page = await server.rooms.backlog(room, since, upto)
        if not page:
            break  # the rest was deleted (retention, or the room was deleted)
        for final in page:
            await send_within(connection, encode(final), server.config.send_stall_s, "viewer")
        since = page[-1].seq
    while True:
        await send_within(connection, await viewer.next(), server.config.send_stall_s, "viewer")


async def _ignore_incoming(connection: ServerConnection) -> None:
    """Viewers send nothing we act on; reading notices when they go away."""
    async for _ in connection:
        pass
