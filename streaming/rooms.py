"""Rooms: seq numbers for finals, the journal, fan-out to viewers through bounded queues.

A final gets its ``seq`` and is written to the journal before any viewer or publisher is sent
it; ``seq`` continues from the journal after a restart. A slow viewer never slows its room:
each has a bounded queue, and a viewer whose queue is full is dropped (it reconnects with
``since`` and loses nothing, since the journal holds every final).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from streaming.journal import Journal, as_caption

log = logging.getLogger(__name__)


class Viewer:
    def __init__(self, max_queue: int):
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queue)
        self.dropped = False
        self.on_drop: Callable[[], object] | None = None  # set by the server: close the socket

    def offer(self, message: dict[str, Any]) -> bool:
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            if self.on_drop is not None:
                self.on_drop()
            return False


@dataclass
class Room:
    name: str
    next_seq: int
    viewers: set[Viewer] = field(default_factory=set)
    publishers: int = 0
    # Held while a final is numbered, journaled and fanned out, and while a viewer joins, so
    # every viewer sees finals in seq order and none twice or never.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fan_out(self, message: dict[str, Any]) -> None:
        for viewer in list(self.viewers):
            if not viewer.offer(message):
                self.viewers.discard(viewer)
                log.warning("dropped a viewer whose queue was full", extra={"room": self.name})


class Rooms:
    """All rooms. At most ``max_rooms`` are kept in memory: past that, the least recently used
    room with no one in it is forgotten (its finals stay in the journal)."""

    def __init__(self, journal: Journal, viewer_queue: int = 512, max_rooms: int = 10_000):
        self.journal = journal
        self.viewer_queue = viewer_queue
        self.max_rooms = max_rooms
        self._rooms: dict[str, Room] = {}  # in order of last use
        self._journal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    async def _in_journal(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._journal_thread, function, *args)

    async def get(self, name: str) -> Room:
        room = self._rooms.pop(name, None)
        if room is None:
            room = Room(name, next_seq=await self._in_journal(self.journal.last_seq, name) + 1)
            room = self._rooms.pop(name, room)  # another task may have made it meanwhile
            if len(self._rooms) >= self.max_rooms:
                empty = next((r for r in self._rooms.values() if not r.viewers and not r.publishers), None)
                if empty is not None:
                    del self._rooms[empty.name]
        self._rooms[name] = room
        return room

    def publish_partial(self, room: Room, message: dict[str, Any]) -> None:
        room.fan_out(message)

    async def publish_final(self, room: Room, message: dict[str, Any], wall_start: float, wall_end: float) -> dict[str, Any]:
        """Number the final, write it to the journal, then fan it out; returns it with its seq."""
        async with room.lock:
            message = {**message, "seq": room.next_seq, "wall_start": round(wall_start, 3)}
            try:
                await self._in_journal(self.journal.append, message, wall_start, wall_end)
            except Exception:
                # Live captions go on even if the disk fails; the operator must hear of it.
                log.exception("could not journal final %d", message["seq"], extra={"room": room.name})
            room.next_seq += 1
            room.fan_out(message)
        return message

    async def join_viewer(self, name: str, since: int | None) -> tuple[Viewer, list[dict[str, Any]], int]:
        """Register a viewer; returns it, the finals after ``since`` to send first, and the room's
        last seq (so a viewer that came without ``since`` knows where to resume from)."""
        room = await self.get(name)
        viewer = Viewer(self.viewer_queue)
        async with room.lock:
            backlog = [] if since is None else [as_caption(r) for r in await self._in_journal(self.journal.finals, name, since)]
            room.viewers.add(viewer)
            last_seq = room.next_seq - 1
        return viewer, backlog, last_seq

    def leave_viewer(self, name: str, viewer: Viewer) -> None:
        room = self._rooms.get(name)
        if room is not None:
            room.viewers.discard(viewer)

    async def transcript(self, name: str) -> list[dict[str, Any]]:
        return await self._in_journal(self.journal.finals, name, 0)

    async def delete(self, name: str) -> int | None:
        """Delete a room and its transcript; None if someone is in it."""
        room = self._rooms.get(name)
        if room is not None and (room.viewers or room.publishers):
            return None
        self._rooms.pop(name, None)
        return await self._in_journal(self.journal.delete_room, name)

    async def last_of_session(self, session: str) -> dict[str, Any] | None:
        return await self._in_journal(self.journal.last_of_session, session)

    async def keep_session(self, session: str, room: str, language: str, context: str | None) -> None:
        try:
            await self._in_journal(self.journal.keep_session, session, room, language, context)
        except Exception:
            # As with finals: the stream goes on; only a revival after a restart would miss it.
            log.exception("could not journal session %s", session, extra={"room": room})

    async def session_settings(self, session: str) -> dict[str, Any] | None:
        return await self._in_journal(self.journal.session_settings, session)

    async def end_session(self, session: str) -> None:
        await self._in_journal(self.journal.end_session, session)

    async def expire(self, cutoff: float) -> int:
        return await self._in_journal(self.journal.delete_older_than, cutoff)

    def close(self) -> None:
        self._journal_thread.shutdown(wait=True)
        self.journal.close()

    def __iter__(self):
        return iter(self._rooms.values())
