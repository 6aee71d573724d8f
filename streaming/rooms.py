"""Rooms: seq numbers for finals, fan-out to viewers through bounded queues, replay.

A slow viewer never slows its room: each has a bounded queue, and a viewer whose queue is full
is dropped (it can reconnect with ``since`` and lose nothing that the room still holds).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class Viewer:
    def __init__(self, max_queue: int):
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=max_queue)
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
    replay_finals: int
    next_seq: int = 1
    finals: deque = field(default_factory=deque)
    viewers: set[Viewer] = field(default_factory=set)
    publishers: int = 0

    def publish(self, message: dict[str, Any]) -> dict[str, Any]:
        """Number a final, keep it for replay, and fan any event out to the viewers."""
        if message["type"] == "final":
            message = {**message, "seq": self.next_seq}
            self.next_seq += 1
            self.finals.append(message)
            while len(self.finals) > self.replay_finals:
                self.finals.popleft()
        for viewer in list(self.viewers):
            if not viewer.offer(message):
                self.viewers.discard(viewer)
                log.warning("room %s: dropped a viewer whose queue was full", self.name)
        return message

    def finals_since(self, since: int) -> list[dict[str, Any]]:
        return [m for m in self.finals if m["seq"] > since]


class Rooms:
    """All rooms. At most ``max_rooms`` are kept: past that, the room with no one in it that
    was used least recently is forgotten (with its replay history)."""

    def __init__(self, replay_finals: int = 1000, viewer_queue: int = 512, max_rooms: int = 10_000):
        self.replay_finals = replay_finals
        self.viewer_queue = viewer_queue
        self.max_rooms = max_rooms
        self._rooms: dict[str, Room] = {}  # in order of last use

    def get(self, name: str) -> Room:
        room = self._rooms.pop(name, None)
        if room is None:
            room = Room(name, self.replay_finals)
            if len(self._rooms) >= self.max_rooms:
                empty = next((r for r in self._rooms.values() if not r.viewers and not r.publishers), None)
                if empty is not None:
                    del self._rooms[empty.name]
        self._rooms[name] = room
        return room

    def join_viewer(self, name: str, since: int | None) -> tuple[Viewer, list[dict[str, Any]]]:
        """Register a viewer; returns it and the finals to replay first (atomically: nothing is
        published between the snapshot and the registration, as both run on the event loop)."""
        room = self.get(name)
        viewer = Viewer(self.viewer_queue)
        backlog = room.finals_since(since) if since is not None else []
        room.viewers.add(viewer)
        return viewer, backlog

    def leave_viewer(self, name: str, viewer: Viewer) -> None:
        room = self._rooms.get(name)
        if room is not None:
            room.viewers.discard(viewer)

    def __iter__(self):
        return iter(self._rooms.values())
