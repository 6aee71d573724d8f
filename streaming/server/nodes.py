"""Nodes sharing a store (``serve --store redis://...``): each says every few seconds where
clients reach it and how loaded it is, and a node too busy for a new publisher names another with
room (``retry_url`` in its ``overloaded`` refusal), which ``flashcaption file|mic`` and the
capture page follow. ``flashcaption nodes`` lists them."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming.server.state import ServerState

log = logging.getLogger(__name__)

EVERY_S = 2.0  # how often a node renews its entry (and reads the others')
TTL_S = 3 * EVERY_S  # an entry not renewed for this long is gone: its node stopped or lost the store
MAX_LISTED_ROOMS = 10_000  # the rooms a node's entry names as in use (it holds at most max_rooms anyway)


def advertised_url(host: str, port: int, tls: bool) -> str:
    """Where clients reach this node, when the operator did not say (--advertise-url)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if tls else 'ws'}://{host}:{port}"


def load(server: ServerState) -> dict[str, Any]:
    """This node's entry: its address and load (live publishers, and the engine's measure of
    how saturated it is: decodes' smoothed wait against the wait at which it refuses)."""
    wait = server.engine.stats.recent_wait()
    return {
        "url": server.advertise_url,
        "model": server.model.name,
        "publishers": len(server.sessions.live),
        "viewers": server.viewer_count,
        "load": round(wait / server.engine.max_wait_s, 3) if server.engine.max_wait_s else 0.0,
        "overloaded": server.engine.overloaded or server.draining,
        # Rooms someone is in here (a room is deleted only when no node has anyone in it).
        "rooms": sorted(room.name for room in server.rooms if room.occupied)[:MAX_LISTED_ROOMS],
    }


def occupied_elsewhere(server: ServerState, room: str) -> str | None:
    """Another node that had someone in ``room`` when it last said (every EVERY_S), or None."""
    return next((str(n["node"]) for n in server.nodes if n.get("node") != server.node and room in n.get("rooms", ())), None)


async def register(server: ServerState) -> None:
    """Renew this node's entry, and read the others', every EVERY_S (background task)."""
    store = server.rooms.shared
    assert store is not None
    while True:
        try:
            await asyncio.to_thread(store.register_node, load(server), TTL_S)
            server.nodes = await asyncio.to_thread(store.nodes)
        except Exception as error:
            log.debug("node registry: %s", error)
        await asyncio.sleep(EVERY_S)


def elsewhere(server: ServerState) -> str | None:
    """Another node with room for a publisher (the least loaded, as last read), or None."""
    others = [n for n in server.nodes if n.get("node") != server.node and not n.get("overloaded") and n.get("url")]
    if not others:
        return None
    return str(min(others, key=lambda n: (n.get("load", 0.0), n.get("publishers", 0)))["url"])
