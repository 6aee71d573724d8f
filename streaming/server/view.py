"""``/v1/captions``: one viewer's connection. It gets ``ready``, the latest revision of finals it
may be showing an older text of (corrected before ``since``), the finals it missed (``since``,
read from the journal a page at a time as its socket drains), then the room's captions and
corrections as they come, through its bounded queue in the room registry. What one viewer holds
is bounded whatever the room's history: a page of backlog, its queue (events and bytes), the
socket's buffers; a viewer that stops reading is closed after ``send_stall_s`` seconds.

A viewer whose token allows ``edit`` (a captioner on ``/editor``) may send corrections; each is
journaled and sent to every viewer of the room, or refused to its sender alone
(``correction_refused``), at most :data:`CORRECTIONS_PER_S` a second."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import ServerConnection

from decoder.context import Context
from streaming import protocol
from streaming.events import CorrectionRefused, Ready, RoomTerms, ShadowFinal, Translation, encode
from streaming.journal import Conflict
from streaming.protocol import ProtocolError
from streaming.room_settings import suggested_terms
from streaming.rooms import Viewer
from streaming.scoring import error_counts
from streaming.server.connection import Client, Stalled, send_within

log = logging.getLogger(__name__)

# A resuming viewer is sent the latest revision of finals corrected up to this many before its
# ``since``: the lines it may still be showing.
RESUME_CORRECTIONS = 1000
CORRECTIONS_PER_S = 5  # per connection, over any 2 s
ROOM_EDITS_PER_S = 20  # per room, whoever sends them
SUGGESTED_FROM = 200  # the latest corrections that suggest terms

if TYPE_CHECKING:
    from streaming.server.state import ServerState


async def serve_viewer(server: ServerState, connection: ServerConnection, query: dict[str, str], client: Client) -> None:
    params = protocol.parse_view(query)
    server.access.authorize(client.token, params.room, "view", client.forwarded)
    # An editor (named, and allowed to edit) sees finals at once in a room under review.
    editor = bool(params.editor) and server.access.allows(client.token, params.room, "edit", client.forwarded)
    joined = await server.rooms.join_viewer(params.room, server.config.max_viewers_per_room, editor=editor, shadow=params.shadow)
    viewer = joined.viewer

    def drop() -> None:
        server.metrics.dropped_viewers += 1
        server.spawn(connection.close(1013, "viewer too slow; reconnect with since"), "close a slow viewer")

    viewer.on_drop = drop
    server.viewer_count += 1
    try:
        ready = Ready(uuid.uuid4().hex[:12], params.room, server.model.name, server.settings.default_language, seq=joined.last_seq)
        await send_within(connection, encode(ready), server.config.send_stall_s, "viewer")
        if editor:
            await send_terms(server, params.room, viewer)  # queued: it follows the backlog
        sender = asyncio.create_task(_send_all(server, connection, viewer, params, joined.last_seq))
        receiver = asyncio.create_task(_receive(server, connection, params, client))
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


async def _send_all(server: ServerState, connection: ServerConnection, viewer: Viewer, params: protocol.ViewParams, upto: int) -> None:
    """The finals the viewer missed, a page at a time as its socket takes them (each followed by
    its translations, and its shadow's text if asked for), then what the room sends it live
    (queued meanwhile)."""
    room, since = params.room, params.since
    if since is not None and since > 0:
        for correction in await server.rooms.corrected(room, max(0, min(since, upto) - RESUME_CORRECTIONS), min(since, upto)):
            await send_within(connection, encode(correction), server.config.send_stall_s, "viewer")
    while since is not None and since < upto:
        page = await server.rooms.backlog(room, since, upto)
        if not page:
            break  # the rest was deleted (retention, or the room was deleted)
        last = page[-1].seq or since
        after: dict[int, list[Translation | ShadowFinal]] = {}
        for event in [*await server.rooms.translations(room, since, last), *(await server.rooms.shadows(room, since, last) if params.shadow else ())]:
            after.setdefault(event.seq, []).append(event)
        for final in page:
            await send_within(connection, encode(final), server.config.send_stall_s, "viewer")
            for event in after.get(final.seq or 0, []):  # each after its final, as live
                await send_within(connection, encode(event), server.config.send_stall_s, "viewer")
        since = page[-1].seq
    while True:
        await send_within(connection, await viewer.next(), server.config.send_stall_s, "viewer")


async def _receive(server: ServerState, connection: ServerConnection, params: protocol.ViewParams, client: Client) -> None:
    """What a viewer sends: corrections and terms, from an editor; reading also notices when it
    goes away. Every message counts against the connection's rate, read or refused, and a
    refusal for the token is logged once per connection."""
    recent: deque[float] = deque()
    logged = False
    async for message in connection:
        if isinstance(message, bytes):
            continue
        seq = None
        try:
            now = time.monotonic()
            while recent and now - recent[0] > 2.0:
                recent.popleft()
            if len(recent) >= 2 * CORRECTIONS_PER_S:
                raise ProtocolError("overloaded", f"at most {CORRECTIONS_PER_S} corrections a second")
            recent.append(now)
            command = protocol.parse_view_message(message)
            seq = command.seq if isinstance(command, protocol.CorrectMessage) else None
            refusal = server.access.refusal(client.token, params.room, "edit", client.forwarded)
            if refusal is not None:
                if not logged:
                    log.warning("refused to edit: %s", refusal, extra={"room": params.room})  # never the token
                    logged = True
                raise ProtocolError("unauthorized", refusal)
            if not server.rooms.may_edit(params.room, now, ROOM_EDITS_PER_S):
                raise ProtocolError("overloaded", f"room {params.room} takes at most {ROOM_EDITS_PER_S} corrections a second")
            if isinstance(command, protocol.CorrectMessage):
                await _correct(server, params, command)
            else:
                await _add_term(server, params, command.term)
            await send_terms(server, params.room)  # what corrections suggest may have changed
        except ProtocolError as error:
            await _refuse(server, connection, CorrectionRefused(seq, error.code, error.message))
        except Conflict as conflict:
            await _refuse(server, connection, CorrectionRefused(seq, "conflict", f"final {seq} was {conflict}", conflict.revision))
        except KeyError:
            await _refuse(server, connection, CorrectionRefused(seq, "bad_request", f"room {params.room} has no final {seq}"))


async def _add_term(server: ServerState, params: protocol.ViewParams, term: str) -> None:
    """An editor's term joins the room's context: kept in the journal, and used by every live
    session in the room that decodes with the room's context (not one of its own) from its next
    decode on."""
    kept = server.settings.learn(params.room, term)
    await server.rooms.add_term(params.room, kept, params.editor)
    learned(server, params.room, server.settings.learned.get(params.room, ()))
    log.info("term added to the room's context by %s", params.editor or "an editor", extra={"room": params.room})


def learned(server: ServerState, room: str, terms: tuple[str, ...]) -> None:
    """The room's learned terms are now ``terms`` (added here, or by an editor on another node):
    its live sessions that decode with the room's context take them from their next decode on."""
    server.settings.learned[room] = terms
    context = server.settings.context(room)
    for publisher in server.sessions.live.values():
        if publisher.room.name == room and not publisher.own_context:
            publisher.session.configure(context=context)


async def send_terms(server: ServerState, room: str, viewer: Viewer | None = None) -> None:
    """The room's learned terms and the terms its corrections suggest, to its editors (or one)."""
    known = {t.text.lower() for t in (server.settings.context(room) or Context()).terms}
    revisions = await server.rooms.recent_revisions(room, SUGGESTED_FROM)
    suggested = await asyncio.to_thread(suggested_terms, revisions, known)
    event = RoomTerms(room, server.settings.learned.get(room, ()), tuple(suggested))
    if viewer is not None:
        viewer.offer(encode(event))
    else:
        server.rooms.to_editors(room, event)


async def _correct(server: ServerState, params: protocol.ViewParams, command: protocol.CorrectMessage) -> None:
    correction, row = await server.rooms.correct(params.room, command.seq, command.text, command.speaker, params.editor, command.base)
    language = row["language"]
    server.metrics.corrections[language] += 1
    # Off the event loop: 2,000 characters of Chinese are a million-cell alignment.
    server.metrics.words_edited[language] += await asyncio.to_thread(
        lambda: error_counts(row["before_text"], row["text"], language)[0])
    log.info("final %d corrected (revision %d) by %s", command.seq, correction.revision, params.editor or "an editor",
             extra={"room": params.room})


async def _refuse(server: ServerState, connection: ServerConnection, refusal: CorrectionRefused) -> None:
    server.metrics.errors[refusal.code if refusal.code in protocol.CLOSE_CODES else "bad_request"] += 1
    await send_within(connection, encode(refusal), server.config.send_stall_s, "viewer")
