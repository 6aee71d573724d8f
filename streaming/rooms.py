"""The room registry: rooms with their seq numbers, viewers and history (the journal), and
the publishers' sessions, live or parked for resumption. No HTTP, no sockets.

A final gets its ``seq`` and is written to the journal before any viewer or publisher is sent
it; ``seq`` continues from the journal after a restart. A slow viewer never slows its room:
each has a bounded queue, and a viewer whose queue is full is dropped (it reconnects with
``since`` and loses nothing, since the journal holds every final).

A session has at most one live publisher. One whose connection dropped is parked until its
grace period ends, and may be resumed by one new connection meanwhile (a resume of a session
that is still live waits for it to park: the server takes the old connection over).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar, cast

from streaming.events import Caption, Correction, Final, Partial, RoomTerms, ShadowFinal, Translation, decode, encode, to_wire
from streaming.protocol import ProtocolError
from streaming.store import SharedStore, Store, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
# Finals read from the journal at a time for a viewer's backlog: what one viewer holds of it.
BACKLOG_PAGE = 100
# A final numbered ahead of one not yet here (numbered on another node, on its way through the
# store) waits for it at most this long; then the missing one is taken as gone (deleted meanwhile).
GAP_WAIT_S = 2.0
# Another node's request, over a room's live events, to let go of a session it resumed.
RELEASE = "release_session"
# Live events waiting to go to other nodes; past it, partials are not shared (finals go through the store).
MAX_BUS_PENDING = 1000
# How long a node's read of its rooms' streams waits for a final before looking at its rooms again.
TAIL_BLOCK_MS = 200


class Viewer:
    """One viewer's pending output: events already encoded, waiting for its socket. Bounded in
    events and in bytes; a viewer past either bound is dropped (the server closes it, 1013, and
    it resumes with ``since``: the journal holds every final)."""

    def __init__(self, max_events: int, max_bytes: int = 1 << 20):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._pending: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.dropped = False
        self.shadow = False  # it asked for the shadow model's text of each final too (shadow=1)
        self.on_drop: Callable[[], object] | None = None  # set by the server: close the socket

    def offer(self, message: str) -> bool:
        """Queue one encoded event; False (and dropped) if it would pass a bound."""
        if self.dropped:
            return False
        if len(self._pending) >= self.max_events or self._bytes + len(message) > self.max_bytes:
            self.dropped = True
            self._pending.clear()
            self._bytes = 0
            if self.on_drop is not None:
                self.on_drop()
            return False
        self._pending.append(message)
        self._bytes += len(message)
        self._ready.set()
        return True

    async def next(self) -> str:
        """The oldest pending event, once there is one."""
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        message = self._pending.popleft()
        self._bytes -= len(message)
        return message


@dataclass
class Room:
    name: str
    next_seq: int
    viewers: set[Viewer] = field(default_factory=set)
    publishers: int = 0  # live publishers' sessions: what the room's publisher limit counts
    parked: int = 0  # sessions whose publisher dropped, resumable for a while
    # Held while a final is numbered, journaled and fanned out, so finals go out in seq order.
    # A viewer joins in one step with no await (see Rooms.join_viewer): it is sent the journal
    # up to next_seq - 1 (released_seq, in a room under review) and the queue from there, none
    # twice or never.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Review delay: the audience (viewers) gets each final this long after it was made, and no
    # partials, so that editors (who get everything at once) can correct it before air.
    review_delay_s: float = 0.0
    editors: set[Viewer] = field(default_factory=set)
    released_seq: int = -1  # the last final the audience has been given (-1: next_seq - 1)
    _held: collections.deque[tuple[float, Final]] = field(default_factory=collections.deque)
    # What follows a held final to the audience (its translations, its shadow's text), by its seq.
    _held_after: dict[int, list[Translation | ShadowFinal]] = field(default_factory=dict)
    _releasing: asyncio.Task[None] | None = None
    # Numbered finals that came before one with a lower seq (see deliver), and since when.
    _ahead: dict[int, Final] = field(default_factory=dict)
    _ahead_since: float = 0.0

    def __post_init__(self) -> None:
        if self.released_seq < 0:
            self.released_seq = self.next_seq - 1

    @property
    def occupied(self) -> bool:
        return bool(self.viewers or self.editors or self.publishers or self.parked or self._held)

    def hold(self, finals: list[tuple[float, Final]]) -> None:
        """Finals made before this room object (the server restarted, or the room was forgotten
        while empty) whose review delay has not passed: released at their time, as if held all along."""
        if not finals:
            return
        assert finals[0][1].seq is not None
        self.released_seq = min(self.released_seq, finals[0][1].seq - 1)
        self._held.extend(finals)
        self._releasing = asyncio.get_running_loop().create_task(self._release(), name=f"review delay of room {self.name}")

    def deliver(self, final: Final) -> None:
        """A numbered final, fanned out in seq order whoever numbered it (a store shared by
        several nodes numbers the room's finals): one that comes before a final with a lower seq
        waits for it (at most GAP_WAIT_S), and one delivered already is not sent again (a node
        reads its own finals back from the store too)."""
        assert final.seq is not None
        if final.seq < self.next_seq:
            return
        if not self._ahead:
            self._ahead_since = time.monotonic()
        self._ahead[final.seq] = final
        self.settle()

    def settle(self) -> None:
        """Fan out the waiting finals that are next in order; past GAP_WAIT_S, skip a gap."""
        if self._ahead and self.next_seq not in self._ahead and time.monotonic() - self._ahead_since > GAP_WAIT_S:
            log.warning("finals %d-%d never came: going on from %d", self.next_seq, min(self._ahead) - 1, min(self._ahead), extra={"room": self.name})
            self.next_seq = min(self._ahead)
        progressed = False
        while (final := self._ahead.pop(self.next_seq, None)) is not None:
            self.next_seq += 1
            self.fan_out(final)
            progressed = True
        if progressed:
            self._ahead_since = time.monotonic()  # what still waits, waits from now

    def fan_out(self, message: Caption | Correction | Translation | ShadowFinal | RoomTerms) -> None:
        if isinstance(message, RoomTerms):  # for editors alone
            self.offer(self.editors, encode(message))
            return
        shadow = isinstance(message, ShadowFinal)  # for viewers that asked for it only
        if self.editors:
            self.offer(self.editors, encode(message), shadow)
        if not self.review_delay_s:
            if isinstance(message, Final) and message.seq is not None:
                self.released_seq = message.seq
            self.offer(self.viewers, encode(message), shadow)
        elif isinstance(message, Final):
            self._held.append((time.monotonic() + self.review_delay_s, message))
            if self._releasing is None or self._releasing.done():
                self._releasing = asyncio.get_running_loop().create_task(self._release(), name=f"review delay of room {self.name}")
        elif isinstance(message, Translation | ShadowFinal):
            if any(held.seq == message.seq for _, held in self._held):  # follows its final to the audience
                self._held_after.setdefault(message.seq, []).append(message)
            else:
                self.offer(self.viewers, encode(message), shadow)
        elif isinstance(message, Correction):
            for index, (due, held) in enumerate(self._held):
                if held.seq == message.seq:  # corrected before air: the audience gets the corrected final
                    self._held[index] = (due, replace(held, text=message.text, speaker=message.speaker, revision=message.revision))
                    return
            self.offer(self.viewers, encode(message))
        # A partial in a room under review reaches editors only: the audience sees finals.

    async def _release(self) -> None:
        """Give the audience each held final at its time, in order."""
        while self._held:
            due, final = self._held[0]
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
                continue
            self._held.popleft()
            if final.seq is None:  # not numbered (the store was away): nothing follows it
                self.offer(self.viewers, encode(final))
                continue
            self.released_seq = final.seq
            self.offer(self.viewers, encode(final))
            for after in self._held_after.pop(final.seq, []):
                self.offer(self.viewers, encode(after), isinstance(after, ShadowFinal))

    def offer(self, viewers: set[Viewer], text: str, shadow: bool = False) -> None:
        """``text`` to each of ``viewers`` (only those that asked for the shadow's, if ``shadow``)."""
        for viewer in list(viewers):
            if shadow and not viewer.shadow:
                continue
            if not viewer.offer(text):
                viewers.discard(viewer)
                log.warning("dropped a viewer whose queue was full", extra={"room": self.name})


class Rooms:
    """All rooms. At most ``max_rooms`` are kept in memory: past that, the least recently used
    room with no one in it is forgotten (its finals stay in the journal)."""

    def __init__(
        self, store: Store, viewer_queue: int = 512, max_rooms: int = 10_000, viewer_bytes: int = 1 << 20,
        review_delay: Callable[[str], float] = lambda room: 0.0, node: str = "",
    ):
        self.store = store
        # A store other nodes share: their finals come through its tail, their live events through
        # its pub/sub, and this node's go there too (start_sharing).
        self.shared = cast(SharedStore, store) if store.shared else None
        self.node = node  # this node's name in a shared store
        self.on_terms: Callable[[str, tuple[str, ...]], None] = lambda room, terms: None  # another node's editors added terms
        self.on_release: Callable[[str], None] = lambda session: None  # another node resumed a session live here
        self._sharing: list[threading.Thread] = []
        self._closing = threading.Event()
        self.review_delay = review_delay  # a room's review delay in seconds (RoomSettings.review_delay)
        self.viewer_queue = viewer_queue
        self.viewer_bytes = viewer_bytes
        self.max_rooms = max_rooms
        self._rooms: dict[str, Room] = {}  # in order of last use
        self._edits: dict[str, collections.deque[float]] = {}  # recent corrections' times, by room
        # Writes (finals first) on one thread; reads that can be long (backlogs, exports) on
        # another, on the journal's read connection, so they never hold a final back.
        self._journal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-read")
        self._bus_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-bus")  # live events out, in order
        self._bus_pending = 0
        self._bus_lock = threading.Lock()
        self.bus_dropped = 0  # live events not shared: the store away, or too many waiting

    async def _in_journal(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._journal_thread, function, *args)

    async def _reading(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._read_thread, function, *args)

    async def get(self, name: str) -> Room:
        room = self._rooms.pop(name, None)
        if room is not None and self.shared is not None and not room.occupied and not room._ahead:
            room = None  # nobody here followed it: other nodes may have numbered finals meanwhile, so it is read afresh
        if room is None:
            delay = self.review_delay(name)
            room = Room(name, next_seq=await self._in_journal(self.store.last_seq, name) + 1, review_delay_s=delay)
            if delay:
                now = time.time()
                recent = await self._in_journal(self.store.written_since, name, now - delay)
                room.hold([(time.monotonic() + row["written"] + delay - now, Final.from_row(row)) for row in recent])
            room = self._rooms.pop(name, room)  # another task may have made it meanwhile
            if len(self._rooms) >= self.max_rooms:
                empty = next((r for r in self._rooms.values() if not r.occupied), None)
                if empty is not None:
                    del self._rooms[empty.name]
        self._rooms[name] = room
        return room

    async def publish_final(self, room: Room, final: Final, wall_start: float, wall_end: float) -> Final:
        """Number the final, write it to the journal, then fan it out; returns it with its seq."""
        async with room.lock:
            message = replace(final, wall_start=round(wall_start, 3))
            try:
                seq = await self._in_journal(self.store.append, to_wire(message), wall_start, wall_end)
            except Exception:
                # Live captions go on even if the disk fails; the operator must hear of it.
                log.exception("could not journal a final", extra={"room": room.name})
                seq = None
            message = replace(message, seq=seq)
            if seq is None:
                # Not (yet) numbered: the store is away (a shared store keeps it on local disk and
                # writes it when it is back; it then comes again, numbered) or failed. Sent on, so
                # live captions go on.
                room.fan_out(message)
            else:
                room.deliver(message)
        return message

    def fan_out(self, room: Room, message: Caption | Correction | Translation | ShadowFinal | RoomTerms) -> None:
        """A live event (not a final) to the room's viewers here, and to other nodes' (shared store)."""
        room.fan_out(message)
        if self.shared is not None:
            with self._bus_lock:
                if not self.shared.available or self._bus_pending >= MAX_BUS_PENDING:
                    self.bus_dropped += 1  # a lost partial, not a lost final: other nodes' viewers resume from the store
                    return
                self._bus_pending += 1
            self._bus_thread.submit(self._share, room.name, encode(message))

    def _share(self, room: str, text: str) -> None:
        assert self.shared is not None
        try:
            self.shared.publish(room, text)
        except Exception as error:  # a lost partial, not a lost final
            log.debug("live event not shared: %s", error, extra={"room": room})
        finally:
            with self._bus_lock:
                self._bus_pending -= 1

    # -- a store other nodes share ---------------------------------------------------------------
    def start_sharing(self) -> None:
        """With a shared store: read the finals of this node's rooms from it (all of them, other
        nodes' and this one's), listen to other nodes' live events, write the local outbox when
        the store is back. Threads, handing what they get to the event loop."""
        if self.shared is None or self._sharing:
            return
        loop = asyncio.get_running_loop()
        self._sharing = [
            threading.Thread(target=self._tail, args=(loop,), name="store-tail", daemon=True),
            threading.Thread(target=self._listen, args=(loop,), name="store-listen", daemon=True),
        ]
        for thread in self._sharing:
            thread.start()

    def _tail(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.shared is not None
        while not self._closing.is_set():
            positions = {room.name: room.next_seq - 1 for room in list(self._rooms.values()) if room.occupied}
            try:
                # The outbox is written on the store thread (behind any final being appended,
                # so order holds), once a ping here says the store answers again: a store that
                # does not answer must not hold the finals queued there for its timeout.
                if self.shared.outbox_pending() and self.shared.ping():
                    self._journal_thread.submit(self.shared.flush).result()
                found = self.shared.tail(positions, TAIL_BLOCK_MS)
            except Exception as error:
                log.debug("store tail: %s", error)
                self._closing.wait(0.5)
                continue
            try:
                loop.call_soon_threadsafe(self._from_tail, found)
            except RuntimeError:
                return  # the event loop has closed

    def _from_tail(self, found: list[tuple[str, dict[str, Any]]]) -> None:
        for name, row in found:
            room = self._rooms.get(name)
            if room is not None:
                room.deliver(Final.from_row(row))
        for room in list(self._rooms.values()):
            if room._ahead:
                room.settle()

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.shared is not None

        def deliver(room: str, text: str) -> None:
            if room not in self._rooms:  # every node hears every room's events: only its own rooms' reach its loop
                return
            try:
                loop.call_soon_threadsafe(self._from_bus, room, text)
            except RuntimeError:
                self._closing.set()

        self.shared.listen(deliver, self._closing)

    def ask_to_release(self, room: str, session: str, node: str) -> None:
        """Ask ``node`` (over the room's live events) to let go of a session resumed here."""
        if self.shared is not None:
            with self._bus_lock:
                self._bus_pending += 1
            self._bus_thread.submit(self._share, room, json.dumps({"type": RELEASE, "session": session, "node": node}))

    def _from_bus(self, name: str, text: str) -> None:
        """Another node's live event (or its request to let go of a session)."""
        if text.startswith(f'{{"type": "{RELEASE}"'):
            request = json.loads(text)
            if request.get("node") == self.node:
                self.on_release(str(request.get("session")))
            return
        try:
            event = decode(text)
        except ValueError:
            log.warning("unreadable live event from another node", extra={"room": name})
            return
        if isinstance(event, RoomTerms):
            self.on_terms(name, event.terms)
        room = self._rooms.get(name)
        if room is not None and isinstance(event, Partial | Correction | Translation | ShadowFinal | RoomTerms):
            room.fan_out(event)  # a final comes through the store's tail, numbered, never this way

    async def hold_session(self, session: str, state: str) -> None:
        """Say in a shared store that this node has the session, ``live`` or ``parked``."""
        if self.shared is not None:
            await self._best_effort(f"say where session {session} is", self.shared.hold_session, session, self.node, state)

    async def session_holder(self, session: str) -> tuple[str, str] | None:
        """(node, live or parked) of a session in a shared store; None: unknown, or not shared."""
        if self.shared is None:
            return None
        try:
            return await self._in_journal(self.shared.session_holder, session)
        except StoreUnavailable:
            return None  # not known while the store is away: a session parked here resumes here

    async def join_viewer(self, name: str, limit: int = 0, editor: bool = False, shadow: bool = False) -> Joined:
        """Register a viewer (``overloaded`` if the room has ``limit`` already; 0: no limit).
        Finals up to the returned ``last_seq`` are the journal's to give (:meth:`backlog`),
        later ones come through the viewer's queue. An ``editor`` gets everything at once; other
        viewers of a room under review get finals after its delay (``last_seq`` is the last one
        released to them)."""
        room = await self.get(name)
        # Checked and taken in one step (no await between): a burst cannot overshoot the limit.
        if limit and len(room.viewers) + len(room.editors) >= limit:
            raise ProtocolError("overloaded", f"room {name} has the most viewers allowed ({limit})")
        viewer = Viewer(self.viewer_queue, self.viewer_bytes)
        viewer.shadow = shadow
        if editor:
            room.editors.add(viewer)
            return Joined(viewer, room.next_seq - 1)
        room.viewers.add(viewer)
        return Joined(viewer, room.released_seq)

    async def backlog(self, name: str, since: int, upto: int, page: int = BACKLOG_PAGE) -> list[Final]:
        """The next page of finals after ``since`` up to ``upto``, read off the event loop."""
        rows = await self._reading(self.store.finals, name, since, page, upto)
        return [Final.from_row(row) for row in rows]

    async def correct(self, name: str, seq: int, text: str, speaker: str | None, editor: str, base: int) -> tuple[Correction, dict[str, Any]]:
        """An editor's correction of a final: journaled (synced), then sent to every viewer, in
        order with the room's finals. Raises KeyError (no such final) or journal.Conflict.
        Returns it, and its journal row (the text before it, the final's language)."""
        room = await self.get(name)
        async with room.lock:
            row = await self._in_journal(self.store.correct, name, seq, text, speaker, editor, base)
            correction = Correction.from_row(name, row)
            self.fan_out(room, correction)
        return correction, row

    async def publish_translation(self, room: Room, translation: Translation) -> None:
        """A final's translation: journaled, then sent to the room (after its final)."""
        async with room.lock:
            try:
                await self._in_journal(self.store.add_translation, room.name, translation.seq, translation.language, translation.text)
            except Exception:
                log.exception("could not journal the translation of final %d", translation.seq, extra={"room": room.name})
            self.fan_out(room, translation)

    async def publish_shadow(self, room: Room, shadow: ShadowFinal) -> None:
        """What the shadow model made of a final: journaled, then sent (after the final) to the
        room's viewers that asked for it."""
        async with room.lock:
            try:
                await self._in_journal(self.store.add_shadow, room.name, shadow.seq, shadow.model, shadow.language, shadow.text)
            except Exception:
                log.exception("could not journal the shadow of final %d", shadow.seq, extra={"room": room.name})
            self.fan_out(room, shadow)

    async def shadows(self, name: str, since: int = 0, upto: int | None = None) -> list[ShadowFinal]:
        """The shadow texts of finals with since < seq (<= upto), by seq."""
        return [ShadowFinal(name, row["seq"], row["model"], row["language"], row["text"])
                for row in await self._reading(self.store.shadows, name, since, upto)]

    async def all_shadows(self, name: str, upto: int | None = None) -> list[dict[str, Any]]:
        return await self._reading(self.store.shadows, name, 0, upto)

    async def all_translations(self, name: str, upto: int | None = None) -> list[dict[str, Any]]:
        return await self._reading(self.store.translations, name, 0, upto)

    async def translations(self, name: str, since: int, upto: int) -> list[Translation]:
        """The translations of finals with since < seq <= upto, by seq."""
        return [Translation(name, row["seq"], row["language"], row["text"]) for row in await self._reading(self.store.translations, name, since, upto)]

    async def corrected(self, name: str, since: int, upto: int) -> list[Correction]:
        """The latest revision of each corrected final with since < seq <= upto."""
        return [Correction.from_row(name, row) for row in await self._reading(self.store.corrected, name, since, upto)]

    async def recent_revisions(self, name: str, limit: int = 500) -> list[dict[str, Any]]:
        return await self._reading(self.store.recent_revisions, name, limit)

    async def add_term(self, name: str, term: str, editor: str) -> None:
        await self._in_journal(self.store.add_room_term, name, term, editor)

    def may_edit(self, name: str, now: float, per_second: int = 20) -> bool:
        """Count one correction (or term) for the room; False past ``per_second`` over 2 s."""
        edits = self._edits.setdefault(name, collections.deque())
        while edits and now - edits[0] > 2.0:
            edits.popleft()
        if len(edits) >= 2 * per_second:
            return False
        edits.append(now)
        if len(self._edits) > self.max_rooms:
            self._edits = {k: v for k, v in self._edits.items() if v and now - v[-1] <= 2.0}
        return True

    def to_editors(self, name: str, event: RoomTerms) -> None:
        """An event for the room's editors alone (on every node)."""
        room = self._rooms.get(name)
        if room is not None:
            self.fan_out(room, event)

    async def revisions(self, name: str) -> list[dict[str, Any]]:
        """Every correction in the room, by seq then revision."""
        return await self._reading(self.store.revisions, name)

    def leave_viewer(self, name: str, viewer: Viewer) -> None:
        room = self._rooms.get(name)
        if room is not None:
            room.viewers.discard(viewer)
            room.editors.discard(viewer)

    async def transcript(self, name: str, upto: int | None = None) -> list[dict[str, Any]]:
        return await self._reading(self.store.finals, name, 0, None, upto)

    async def delete(self, name: str) -> int | None:
        """Delete a room and its transcript; None if someone is in it (or may resume)."""
        room = self._rooms.get(name)
        if room is not None and room.occupied:
            return None
        self._rooms.pop(name, None)
        return await self._in_journal(self.store.delete_room, name)

    async def last_of_session(self, session: str) -> dict[str, Any] | None:
        return await self._in_journal(self.store.last_of_session, session)

    async def keep_session(self, session: str, room: str, language: str, context: str | None) -> None:
        # As with finals: the stream goes on; only a revival after a restart would miss it.
        await self._best_effort(f"record session {session}", self.store.keep_session, session, room, language, context)

    async def _best_effort(self, what: str, function: Callable[..., Any], *args: Any) -> None:
        """A store write the stream does not wait on: a failure is logged, never raised."""
        try:
            await self._in_journal(function, *args)
        except StoreUnavailable as error:
            log.warning("could not %s: %s", what, error)
        except Exception:
            log.exception("could not %s", what)

    async def session_settings(self, session: str) -> dict[str, Any] | None:
        return await self._in_journal(self.store.session_settings, session)

    async def end_session(self, session: str) -> None:
        """The session ends for good: no resume (with a shared store, unless another node holds it now)."""
        if self.shared is not None:
            await self._best_effort(f"end session {session}", self.shared.end_session_of, session, self.node)
        else:
            await self._best_effort(f"end session {session}", self.store.end_session, session)

    async def expire(self, cutoff: float) -> int:
        return await self._in_journal(self.store.delete_older_than, cutoff)

    async def revoked_tokens(self) -> frozenset[str]:
        return await self._in_journal(self.store.revoked_tokens)

    async def room_terms(self) -> dict[str, tuple[str, ...]]:
        return await self._in_journal(self.store.room_terms)

    async def forget_sessions(self, cutoff: float, live: Iterable[str]) -> int:
        return await self._in_journal(self.store.forget_sessions, cutoff, list(live))

    def close(self) -> None:
        self._closing.set()
        for thread in self._sharing:
            thread.join(timeout=5)
        self._bus_thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)
        self._journal_thread.shutdown(wait=True)
        self.store.close()

    def __iter__(self) -> Iterator[Room]:
        return iter(self._rooms.values())


@dataclass(frozen=True)
class Joined:
    viewer: Viewer
    last_seq: int  # the room's last final when the viewer joined


class _Publisher(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def room(self) -> Room: ...

    @property
    def address(self) -> str: ...


P = TypeVar("P", bound=_Publisher)


class Publishers(Generic[P]):
    """Every session with a publisher: live (connected, or finishing what it heard) or parked
    (its connection dropped; resumable until a deadline). A room's publisher count is its live
    sessions; parked ones are counted apart, and each client address may leave at most
    ``max_parked_per_address`` parked at once (parking one more ends its oldest), so dropping
    connections cannot lock a room. Deadlines are on the caller's clock (the server uses
    ``time.monotonic()``) and are enforced by calling :meth:`expire`."""

    def __init__(self, max_parked_per_address: int = 16) -> None:
        self.max_parked_per_address = max_parked_per_address
        self.live: dict[str, P] = {}
        self._parked: dict[str, tuple[P, float]] = {}  # in the order they were parked

    def join(self, publisher: P) -> None:
        """A new (or revived) session, live."""
        if publisher.id in self.live or publisher.id in self._parked:
            raise ProtocolError("bad_request", f"session {publisher.id} exists already")
        self.live[publisher.id] = publisher
        publisher.room.publishers += 1

    def resume(self, session: str, room: str | None) -> P | None:
        """The parked session, live again; None if none is parked (the caller may revive it
        from the journal). A session that is live is not taken over: refused. A resume is let
        in even if the room has filled up meanwhile: the speaker was there first."""
        if session in self.live:
            raise ProtocolError(
                "bad_request", f"session {session} is still live on another connection; end that one first, or resume after it drops"
            )
        parked = self._parked.get(session)
        if parked is None:
            return None
        publisher = parked[0]
        if room is not None and room != publisher.room.name:
            raise ProtocolError("bad_request", f"session {session} belongs to room {publisher.room.name}, not {room}")
        del self._parked[session]
        self.live[session] = publisher
        publisher.room.parked -= 1
        publisher.room.publishers += 1
        return publisher

    def park(self, publisher: P, deadline: float) -> list[P]:
        """The connection dropped and what it sent is captioned: resumable until ``deadline``.
        Returns the sessions this pushed out (the same address's oldest parked, past its
        bound), which are forgotten and are the caller's to end."""
        del self.live[publisher.id]
        publisher.room.publishers -= 1
        publisher.room.parked += 1
        self._parked[publisher.id] = (publisher, deadline)
        same = [p for p, _ in self._parked.values() if p.address == publisher.address]
        pushed = same[: max(0, len(same) - self.max_parked_per_address)]
        for old in pushed:
            self._forget(old)
        return pushed

    def leave(self, publisher: P) -> None:
        """The session ended."""
        del self.live[publisher.id]
        publisher.room.publishers -= 1

    def expire(self, now: float) -> list[P]:
        """Parked sessions whose deadline passed, forgotten; the caller ends them."""
        due = [publisher for publisher, deadline in self._parked.values() if deadline <= now]
        for publisher in due:
            self._forget(publisher)
        return due

    def let_go(self, session: str) -> None:
        """Forget a parked session without ending it: another node has resumed it (shared store)."""
        parked = self._parked.get(session)
        if parked is not None:
            self._forget(parked[0])

    def _forget(self, publisher: P) -> None:
        del self._parked[publisher.id]
        publisher.room.parked -= 1

    def parked_room(self, session: str) -> str | None:
        parked = self._parked.get(session)
        return parked[0].room.name if parked else None

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    @property
    def parked_ids(self) -> list[str]:
        return list(self._parked)

    def clear_parked(self) -> list[P]:
        """Shutdown: every parked session, forgotten (a restart may still revive them)."""
        parked = [publisher for publisher, _ in self._parked.values()]
        for publisher in parked:
            self._forget(publisher)
        return parked
