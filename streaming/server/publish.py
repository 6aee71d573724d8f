"""``/v1/publish``: one publisher's connection, from handshake to the last final.

A connection runs two loops: :func:`_receive` reads audio and control messages into the
session (:mod:`streaming.session`), and :func:`_pump` hands the session's decode requests to
the engine and delivers its captions to the room (:mod:`streaming.rooms`) and back to the
publisher. A connection that drops leaves its session parked in the registry, resumable with
``resume=ID`` (here, or after a restart, revived from the journal).

What a publisher can make the server hold is bounded by how it sends: a live publisher more
than ``audio_burst_s`` ahead of real time is refused at once; a ``mode=file`` publisher's audio
not yet decoded is held to about ``file_backlog_s``, past which its socket is not read until the
decoder catches up (TCP then slows the client down; the keepalive does not count it against the
client). Either way a connection that drops leaves at most that much audio to caption.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import websockets

from decoder.api import SAMPLE_RATE
from decoder.context import Context, context_from_json, context_to_json
from streaming import protocol
from streaming.audio import PcmDecoder
from streaming.compat import NATIVE, Dialect
from streaming.events import Final, Ready, Translation, caption, encode
from streaming.metrics import Histogram
from streaming.protocol import AudioMessage, ClearMessage, ConfigMessage, EndMessage, FlushMessage, ProtocolError
from streaming.scoring import units
from streaming.server import nodes, shadows
from streaming.server.connection import Client, Keepalive, Link, Stalled, send_error, send_within
from streaming.server.state import Publisher
from streaming.session import Session

if TYPE_CHECKING:
    from streaming.engine import Decoded
    from streaming.server.state import ServerState
    from streaming.session import DecodeRequest

log = logging.getLogger(__name__)

# Close code (application range) for a connection whose session was resumed on another one.
TAKEN_OVER = 4000
# How long a taken-over connection has to close before it is cut.
TAKE_OVER_WAIT_S = 2.0
# A publisher's socket receive buffer: what the kernel holds unread for it (about 8 s of 16 kHz
# 16-bit audio). Without a bound, autotuning lets megabytes of a held-back recording wait
# there, all of which would still be read and captioned after the client hangs up.
RECEIVE_BUFFER_BYTES = 256 * 1024
# With a store other nodes share: how long a resume waits for the node that had the session to
# caption what it heard and park it (its last final must be in the store before this node goes on).
REMOTE_PARK_WAIT_S = 10.0
# How long a stream that ended waits for its last finals' translations before it closes.
TRANSLATIONS_AT_CLOSE_S = 30.0


class Refused(ProtocolError):
    """The publisher broke the protocol: its connection ends, and its session with it (not resumable)."""


async def serve_publisher(
    server: ServerState,
    connection: Link,
    query: dict[str, str],
    client: Client,
    keepalive: Keepalive,
    dialect: Dialect = NATIVE,
    params: protocol.PublishParams | None = None,
) -> None:
    """``dialect``: what the connection speaks (streaming/compat); ``params``: the session's, as
    a dialect read them from its own query (else protocol v1's query)."""
    params = params or protocol.parse_publish(query)
    if server.draining:
        raise ProtocolError("overloaded", "server is shutting down", retry_url=nodes.elsewhere(server))
    raw = connection.transport.get_extra_info("socket")
    if raw is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    publisher = await (_resume(server, params, query, connection, client) if params.resume else _start(server, params, connection, client))
    publisher.dialect = dialect
    pcm = PcmDecoder(params.encoding, params.sample_rate)
    publisher.pump = asyncio.create_task(_pump(server, publisher))
    log.info(
        "publisher %s (%s, %d Hz)", "resumed" if params.resume else "joined", params.encoding, params.sample_rate,
        extra=publisher.log_extra,
    )
    ended = False
    try:
        asked = params.language if params.language not in (None, "auto") else None
        mapped = asked if asked is not None and asked != server.settings.nearest(asked) else None
        ready = Ready(publisher.id, publisher.room.name, server.model.name, publisher.session.language, params.sample_rate, mapped_from=mapped)
        for text in dialect.ready(ready):
            await connection.send(text)
        ended = await _receive(server, publisher, pcm, keepalive)
    except Refused:
        ended = True
        raise
    finally:
        await _after_connection(server, publisher, pcm, ended)
    if ended and publisher.translator is not None and not publisher.translator.done():
        # The stream's last translations are the publisher's too: they come before the close.
        await asyncio.wait({publisher.translator}, timeout=TRANSLATIONS_AT_CLOSE_S)
    for text in dialect.closing(publisher.session.received_seconds):
        await connection.send(text)
    await connection.close(1000, "end of stream")


async def _start(server: ServerState, params: protocol.PublishParams, connection: Link, client: Client) -> Publisher:
    """A new session."""
    server.access.authorize(client.token, params.room, "publish", client.forwarded)
    room = await server.rooms.get(params.room)
    limit = server.config.max_publishers_per_room
    if limit and room.publishers >= limit:
        raise ProtocolError("overloaded", f"room {params.room} has the most publishers allowed ({limit})")
    if server.engine.overloaded:
        elsewhere = nodes.elsewhere(server)
        raise ProtocolError("overloaded", f"server is at capacity; {'connect to ' + elsewhere if elsewhere else 'try again later'}", retry_url=elsewhere)
    language = server.settings.session_language(params.room, params.language, params.languages)
    translate = server.settings.translation(params.room, params.translate)
    session = Session(
        server.config.session, language=language, context=params.context or server.settings.context(params.room), partials=params.partials,
        keep_audio=translate is not None or server.settings.shadow(params.room) is not None,
    )
    publisher = Publisher(
        id=uuid.uuid4().hex[:12], params=params, session=session, room=room, connection=connection, address=client.address
    )
    publisher.own_context = params.context is not None
    publisher.translate = translate
    server.sessions.join(publisher)
    await server.rooms.hold_session(publisher.id, "live")
    await _keep_settings(server, publisher, params.context)
    return publisher


async def _resume(
    server: ServerState, params: protocol.PublishParams, query: dict[str, str], connection: Link, client: Client
) -> Publisher:
    """A session continued after its connection dropped: parked here, or in the journal. A
    session still live here (its client reconnected before the server saw the old connection
    go, or while its last words were being captioned) is taken over: the old connection is
    closed with :data:`TAKEN_OVER` and the session parks, then resumes on this one."""
    assert params.resume is not None
    existing = server.sessions.live.get(params.resume)
    earlier = existing.room.name if existing else server.sessions.parked_room(params.resume)
    if earlier is None:
        earlier = (await server.rooms.last_of_session(params.resume) or {}).get("room")
    server.access.authorize(client.token, earlier or params.room, "publish", client.forwarded)
    if existing is not None:
        if "room" in query and query["room"] != existing.room.name:
            raise ProtocolError("bad_request", f"session {params.resume} belongs to room {existing.room.name}, not {query['room']}")
        await _take_over(server, existing)
    elif earlier is not None and (holder := await server.rooms.session_holder(params.resume)) and holder[0] != server.node:
        server.sessions.let_go(params.resume)  # parked here once, resumed on another node since: that one's state is the session's
    publisher = server.sessions.resume(params.resume, query.get("room"))
    if publisher is not None:
        # The audio clock stood still while the connection was down; the wall clock did not.
        publisher.started_wall = time.time() - publisher.session.received_seconds
        await server.rooms.hold_session(publisher.id, "live")
    else:
        publisher = await _revive(server, params, query, connection, client)
    publisher.connection = connection
    publisher.address = client.address
    publisher.released = asyncio.Event()
    # This connection's audio format and mode; the session's speaker.
    publisher.params = replace(params, speaker=publisher.params.speaker)
    return publisher


async def _take_over(server: ServerState, existing: Publisher) -> None:
    """Close ``existing``'s connection (if it is still open) and wait until its session has
    captioned what it heard and parked (or ended)."""
    log.info("session resumed on another connection: closing the old one", extra=existing.log_extra)
    if not existing.parking:
        server.spawn(existing.connection.close(TAKEN_OVER, "session resumed on another connection"), "close a taken-over publisher")
    try:
        await asyncio.wait_for(asyncio.shield(existing.released.wait()), TAKE_OVER_WAIT_S)
    except TimeoutError:
        existing.connection.transport.abort()  # a client that does not answer the close
        await existing.released.wait()


async def _revive(
    server: ServerState, params: protocol.PublishParams, query: dict[str, str], connection: Link, client: Client
) -> Publisher:
    """Resume a session this process does not hold (the server restarted, or, with a store other
    nodes share, it was on another node): its room, speaker, segment numbering and audio clock
    come from its latest final in the journal."""
    assert params.resume is not None
    earlier = await server.rooms.last_of_session(params.resume)
    await _until_parked_elsewhere(server, params.resume, earlier["room"] if earlier else query.get("room"))
    last = await server.rooms.last_of_session(params.resume)
    if last is None or time.time() - last["written"] > server.config.resume_grace_s or server.draining:
        raise ProtocolError("bad_request", f"no session {params.resume} to resume (unknown, ended, or its grace period passed)")
    if "room" in query and query["room"] != last["room"]:
        raise ProtocolError("bad_request", f"session {params.resume} belongs to room {last['room']}, not {query['room']}")
    # What the session asked for (a journal older than that table has only its last final).
    settings = await server.rooms.session_settings(params.resume) or {}
    own_context = params.context or (context_from_json(settings["context"]) if settings.get("context") else None)
    asked = settings.get("language") or last["language"]
    requested, candidates = (None, tuple(asked.split(","))) if "," in asked else (asked, ())
    try:
        language = server.settings.language(requested, candidates) or server.settings.default_language
    except ProtocolError:
        # The server came back with a model that lacks the language: its default, said so.
        log.warning("resumed session asked for %s, which model %s lacks", asked, server.model.name)
        language = server.settings.default_language
    translate = server.settings.translation(last["room"], params.translate)
    session = Session(
        server.config.session,
        language=language,
        context=own_context or server.settings.context(last["room"]),
        first_segment=last["segment"] + 1,
        clock_offset_s=last["end"],
        last_language=last["language"],
        keep_audio=translate is not None or server.settings.shadow(last["room"]) is not None,
    )
    publisher = Publisher(
        id=params.resume,
        params=replace(params, speaker=last["speaker"]),
        session=session,
        room=await server.rooms.get(last["room"]),
        connection=connection,
        address=client.address,
    )
    publisher.started_wall = time.time() - last["end"]
    publisher.own_context = own_context is not None
    publisher.translate = translate
    server.sessions.join(publisher)
    await server.rooms.hold_session(publisher.id, "live")
    await _keep_settings(server, publisher, own_context)
    return publisher


async def _until_parked_elsewhere(server: ServerState, session: str, room: str | None) -> None:
    """With a store other nodes share: wait until the node the session is live on has parked it,
    so that its last final is in the store. Its client moved here before that node saw the
    connection drop (then that node is asked to let it go, as a take-over does on one node), or
    while it captions the last words. Bounded: a node that died never will."""
    deadline = time.monotonic() + REMOTE_PARK_WAIT_S
    asked = False
    while (holder := await server.rooms.session_holder(session)) and holder[0] != server.node and holder[1] == "live":
        if not asked and room is not None:
            server.rooms.ask_to_release(room, session, holder[0])
            asked = True
        if time.monotonic() > deadline:
            log.warning("session %s is still live on node %s: resumed here all the same", session, holder[0])
            return
        await asyncio.sleep(0.05)


def release(server: ServerState, session: str) -> None:
    """Another node resumed this node's live session (its client reconnected there first): the
    old connection is closed as a take-over closes it; the session parks, and that node goes on."""
    existing = server.sessions.live.get(session)
    if existing is not None and not existing.parking:
        log.info("session resumed on another node: closing its connection here", extra=existing.log_extra)
        server.spawn(existing.connection.close(TAKEN_OVER, "session resumed on another node"), "close a publisher taken over elsewhere")


async def _keep_settings(server: ServerState, publisher: Publisher, own_context: Context | None) -> None:
    """Journal the session's language and the publisher's own context (None: unchanged),
    so that a session resumed after a restart goes on as it was."""
    context = context_to_json(own_context) if own_context else None
    await server.rooms.keep_session(publisher.id, publisher.room.name, publisher.session.language, context)


async def _receive(server: ServerState, publisher: Publisher, pcm: PcmDecoder, keepalive: Keepalive) -> bool:
    """Feed the session until ``end`` (returns True) or the connection closes (False)."""
    session = publisher.session
    live = publisher.params.mode == "live"
    started, audio_seconds = time.monotonic(), 0.0
    idle_timeout = server.config.idle_timeout_s
    while True:
        try:
            message = await asyncio.wait_for(publisher.connection.recv(), idle_timeout or None)
        except TimeoutError:
            raise Refused("bad_request", f"no audio or message for {idle_timeout:g} s") from None
        except websockets.ConnectionClosedOK:
            return False
        if session.ending:  # ended meanwhile by the server's shutdown: nothing more is taken
            return False
        try:
            command = None if isinstance(message, bytes) else publisher.dialect.client_message(message)
            if isinstance(command, AudioMessage):
                message = command.data  # audio that came as text (base64): read as a frame
            if isinstance(message, bytes):
                samples = pcm.decode(message)
                session.receive_audio(samples)
                publisher.wake.set()
                audio_seconds += len(samples) / SAMPLE_RATE
                if live and audio_seconds - (time.monotonic() - started) > server.config.audio_burst_s:
                    # Told at once rather than slowed down: a socket read late delays the
                    # keepalive's pongs behind the audio, and the connection dies of it.
                    raise Refused(
                        "bad_request",
                        f"audio arrives faster than real time (over {server.config.audio_burst_s:g} s ahead); "
                        "send it as it is spoken, or connect with mode=file to caption a recording",
                    )
                if not live and session.backlog_seconds > server.config.file_backlog_s:
                    with keepalive.hold():
                        await _until_decoded(publisher, server.config.file_backlog_s / 2)
            else:
                if command is None:
                    continue  # a keepalive
                if isinstance(command, EndMessage):
                    session.receive_audio(pcm.finish())
                    session.end()
                    publisher.wake.set()
                    return True
                if isinstance(command, FlushMessage):
                    session.flush()
                elif isinstance(command, ClearMessage):
                    session.discard()
                elif isinstance(command, ConfigMessage):
                    session.configure(language=server.settings.language(command.language), context=command.context)
                    if command.context is not None:
                        publisher.own_context = True
                    await _keep_settings(server, publisher, command.context)
            for text in publisher.dialect.answers():  # once the message has taken effect
                await publisher.connection.send(text)
        except Refused:
            raise
        except ProtocolError as error:
            publisher.dialect.answers(applied=False)  # the message did not take effect
            if error.code == "too_large":
                raise Refused(error.code, error.message) from None
            # Other mistakes are reported and the stream goes on: captions are not lost
            # over one bad message.
            await send_error(publisher.connection, error, close=False, metrics=server.metrics, dialect=publisher.dialect)
        publisher.wake.set()


async def _until_decoded(publisher: Publisher, backlog_s: float) -> None:
    """Wait until the session's audio not yet decoded is down to ``backlog_s``, or nothing more
    can be decoded before more audio comes (the open utterance waits for more)."""
    assert publisher.pump is not None
    while publisher.session.backlog_seconds > backlog_s and not publisher.pump.done():
        publisher.progress.clear()
        publisher.wake.set()  # the pump looks at the session again, and says when it is idle
        progress = asyncio.ensure_future(publisher.progress.wait())
        await asyncio.wait({progress, publisher.pump}, return_when=asyncio.FIRST_COMPLETED)
        progress.cancel()
        if publisher.pump_idle:
            return


async def _after_connection(server: ServerState, publisher: Publisher, pcm: PcmDecoder, ended: bool) -> None:
    """Whatever ended the connection, the utterance in progress is finalised and its final
    reaches the room. A dropped connection parks the session for resumption (if its dialect
    can resume one: other services' clients cannot, so their sessions end)."""
    session = publisher.session
    if not session.ending:
        session.receive_audio(pcm.finish())
        if ended or server.draining or not publisher.dialect.resumable:
            session.end()
        else:
            session.flush()
            publisher.parking = True
    publisher.wake.set()
    assert publisher.pump is not None
    await asyncio.shield(publisher.pump)
    if session.finished:
        server.sessions.leave(publisher)
        if not server.draining:
            await server.rooms.end_session(publisher.id)
        else:  # a drained session may still be resumed, after the restart or on another node: at once
            await server.rooms.hold_session(publisher.id, "parked")
        log.info("publisher left", extra=publisher.log_extra)
        publisher.released.set()
    else:
        publisher.parking = False
        pushed = server.sessions.park(publisher, time.monotonic() + server.config.resume_grace_s)
        await server.rooms.hold_session(publisher.id, "parked")
        log.info("publisher dropped; resumable for %.0f s", server.config.resume_grace_s, extra=publisher.log_extra)
        publisher.released.set()
        for old in pushed:
            await end_parked(server, old, "its address left more sessions resumable than allowed")


async def _pump(server: ServerState, publisher: Publisher) -> None:
    """Runs a session's decodes, one at a time, and delivers its captions."""
    session = publisher.session
    while True:
        publisher.pump_idle = True
        publisher.progress.set()
        await publisher.wake.wait()
        publisher.wake.clear()
        publisher.pump_idle = False
        while (request := session.next_request()) is not None:
            try:
                decoded = await _decode(server, publisher, request)
            except Exception:
                log.exception("decode failed", extra=publisher.log_extra)
                session.receive_failure(request.id)
            else:
                if decoded is None:
                    continue  # a partial withdrawn for a final
                if request.urgent and request.check is None and decoded.hypothesis.cut:
                    # A final's text (or an early final's) the model may not have finished:
                    # counted and said, never silent.
                    server.metrics.cut_finals[decoded.hypothesis.cut] += 1
                    log.info("final decode stopped short (%s) on %.1f s of audio", decoded.hypothesis.cut,
                             len(request.audio) / SAMPLE_RATE, extra=publisher.log_extra)
                rejected = decoded.hypothesis.rejected
                if request.urgent and request.check is None and rejected:
                    # A guard against invented text dropped these words; under noise it may be
                    # real speech, so it is counted and said.
                    server.metrics.rejected_finals[rejected] += 1
                    log.info("final decode's words not taken for speech (%s) on %.1f s of audio", rejected,
                             len(request.audio) / SAMPLE_RATE, extra=publisher.log_extra)
                if request.urgent and log.isEnabledFor(logging.DEBUG):
                    log.debug("urgent decode: %.2f s of audio, %d lead-in words, check %s, early end %s: %r",
                              len(request.audio) / SAMPLE_RATE, request.context_words, request.check is not None,
                              request.early_end, "".join(w.text for w in decoded.hypothesis.words), extra=publisher.log_extra)
                checked = session.receive_hypothesis(request.id, decoded.hypothesis, decoded.wall_seconds)
                if checked is not None:
                    server.metrics.final_checks[checked] += 1
                    if not checked.endswith("covered"):
                        log.info("final checked: %s", checked, extra=publisher.log_extra)
            await _deliver(server, publisher)
            publisher.progress.set()
        await _deliver(server, publisher)  # audio alone can complete a final (decoded early)
        if session.finished or (publisher.parking and session.idle):
            return


async def _decode(server: ServerState, publisher: Publisher, request: DecodeRequest) -> Decoded | None:
    """Decode ``request``. A partial is withdrawn (None) as soon as the session has a final to
    decode: under load the partial may take longer than the final itself, and its words would
    be stale or, its utterance being over, dropped."""
    if request.urgent or request.check is not None:
        return await server.engine.decode(request)
    decoding = asyncio.ensure_future(server.engine.decode(request))
    session, woken = publisher.session, False
    try:
        while True:
            wake = asyncio.ensure_future(publisher.wake.wait())
            try:
                await asyncio.wait((decoding, wake), return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
            if decoding.done():
                return decoding.result()
            publisher.wake.clear()
            woken = True
            if session.final_due:
                decoding.cancel()
                session.withdraw(request.id)
                return None
    finally:
        if woken:
            publisher.wake.set()  # what woke this loop is seen again by the pump
        if not decoding.done():
            decoding.cancel()  # the pump itself was cancelled


async def _deliver(server: ServerState, publisher: Publisher) -> None:
    for event in publisher.session.events():
        message = caption(event, publisher.room.name, publisher.id, publisher.params.speaker)
        if isinstance(message, Final):
            audio_end = publisher.started_wall + event.end
            message = await server.rooms.publish_final(publisher.room, message, publisher.started_wall + event.start, audio_end)
            latency = max(0.0, time.time() - audio_end)
            server.metrics.final_latency.observe(latency)
            if message.text:
                language = message.language
                server.metrics.finals[language] += 1
                server.metrics.words_captioned[language] += len(units(message.text, language))
                server.metrics.final_latency_by_language.setdefault(language, Histogram()).observe(latency)
                audio = getattr(event, "audio", None)  # a final's, in a session that keeps it
                if audio is not None and message.seq is not None:  # (one not numbered, the store away, is not translated)
                    if publisher.translate:
                        _queue_translation(server, publisher, message, audio)
                    shadows.offer(server, publisher.room, message, audio, publisher.session.context)
        else:
            server.rooms.fan_out(publisher.room, message)
        try:
            for text in publisher.dialect.caption(message):
                await send_within(publisher.connection, text, server.config.send_stall_s, "publisher")
        except (websockets.ConnectionClosed, Stalled):
            pass  # the publisher left (or was cut off for not reading); the room still gets every caption


def _queue_translation(server: ServerState, publisher: Publisher, final: Final, audio: np.ndarray) -> None:
    """A final to translate, after the ones before it; past ``max_pending_translations`` the
    oldest waiting is given up (counted and logged): translations never hold finals back."""
    queue = publisher.translations
    if queue.qsize() >= server.config.max_pending_translations:
        skipped, _, _ = queue.get_nowait()
        server.metrics.translations_skipped += 1
        log.warning("translation of final %s skipped: %d finals were waiting for theirs", skipped.seq, queue.qsize() + 1,
                    extra=publisher.log_extra)
    queue.put_nowait((final, audio, time.monotonic()))
    if publisher.translator is None or publisher.translator.done():
        publisher.translator = server.spawn(_translate(server, publisher), "translate finals")


async def _translate(server: ServerState, publisher: Publisher) -> None:
    """Translate the session's waiting finals, one at a time, in order (streaming/translation.py;
    the speech model's translation is a decode below every final: it never delays the next one)."""
    assert publisher.translate is not None
    while not publisher.translations.empty():
        final, audio, queued = publisher.translations.get_nowait()
        assert final.seq is not None
        try:
            text = await server.translators[publisher.translate].translate(final, audio, publisher.translate)
        except Exception:
            log.exception("translation of final %d failed", final.seq, extra=publisher.log_extra)
            server.metrics.translations_failed += 1
            continue
        translation = Translation(publisher.room.name, final.seq, publisher.translate, text)
        await server.rooms.publish_translation(publisher.room, translation)
        server.metrics.translation_delay.observe(time.monotonic() - queued)
        if publisher.dialect is NATIVE:  # a native publisher (flashcaption file --lang) sees its translations too
            try:
                await send_within(publisher.connection, encode(translation), server.config.send_stall_s, "publisher")
            except (websockets.ConnectionClosed, Stalled):
                pass


async def end_parked(server: ServerState, publisher: Publisher, reason: str) -> None:
    """A parked session (already forgotten by the registry) ends for good: no resume."""
    publisher.session.end()
    await server.rooms.end_session(publisher.id)
    log.info("resumable session ended: %s", reason, extra=publisher.log_extra)


def end_all(publishers: list[Publisher]) -> list[asyncio.Task[None]]:
    """Shutdown: every live session ends (its open utterance finalised); returns their pumps."""
    for publisher in publishers:
        if not publisher.session.ending:
            publisher.session.end()
            publisher.wake.set()
    return [p.pump for p in publishers if p.pump is not None]
