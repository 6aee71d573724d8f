"""``/v1/captions``: one viewer's connection. It gets ``ready``, the finals it missed (``since``),
then the room's captions as they come, through its bounded queue in the room registry."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import ServerConnection

from streaming import protocol
from streaming.events import Ready, encode
from streaming.protocol import ProtocolError
from streaming.rooms import Viewer
from streaming.server.connection import request_token

if TYPE_CHECKING:
    from streaming.server.state import ServerState


async def serve_viewer(server: ServerState, connection: ServerConnection, query: dict[str, str]) -> None:
    params = protocol.parse_view(query)
    token = request_token(connection, query)
    server.access.authorize(token, params.room, "view")
    limit = server.config.max_viewers_per_room
    if limit and len((await server.rooms.get(params.room)).viewers) >= limit:
        raise ProtocolError("overloaded", f"room {params.room} has the most viewers allowed ({limit})")
    viewer, backlog, last_seq = await server.rooms.join_viewer(params.room, params.since)

    def drop() -> None:
        server.metrics.dropped_viewers += 1
        server.spawn(connection.close(1013, "viewer too slow; reconnect with since"), "close a slow viewer")

    viewer.on_drop = drop
    server.viewer_count += 1
    try:
        ready = Ready(uuid.uuid4().hex[:12], params.room, server.model.name, server.settings.default_language, seq=last_seq)
        await connection.send(encode(ready))
        for message in backlog:
            await connection.send(encode(message))
        sender = asyncio.create_task(_send_queued(connection, viewer))
        receiver = asyncio.create_task(_ignore_incoming(connection))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, websockets.ConnectionClosed):
                raise error
    finally:
        server.rooms.leave_viewer(params.room, viewer)
        server.viewer_count -= 1


async def _send_queued(connection: ServerConnection, viewer: Viewer) -> None:
    while True:
        message = await viewer.queue.get()
        await connection.send(encode(message))


async def _ignore_incoming(connection: ServerConnection) -> None:
    """Viewers send nothing we act on; reading notices when they go away."""
    async for _ in connection:
        pass
