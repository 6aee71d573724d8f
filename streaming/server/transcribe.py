"""``POST /v1/audio/transcriptions``: a recording captioned by a session of its own.

The request is OpenAI's (the form read by :mod:`streaming.compat.openai_files`); the session is a
publisher's like any other (:func:`streaming.server.publish.serve_publisher`), fed from the file
instead of a socket (:class:`FileLink`) as fast as the decoder takes it, finals only. Its room,
the journal and ``/metrics`` see it as they see every publisher. Everything is refused that can
be before the body is read: a bad token, a full server, a body declared too large.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING

import numpy as np
import websockets
from python_multipart.multipart import MultipartParser, parse_options_header
from websockets.datastructures import MultipleValuesError

from decoder.api import SAMPLE_RATE
from streaming import media
from streaming.compat.openai_files import FileDialect, FileRequest, parse_form, render, request_room, stream_delta, stream_done, stream_error
from streaming.compat.openai_realtime import OpenAIError
from streaming.events import Final
from streaming.protocol import ProtocolError, parse_publish, split_path
from streaming.server import publish
from streaming.server.connection import Client, Keepalive, client_from
from streaming.server.front import Answer, BodyError, BodyRequest

if TYPE_CHECKING:
    from streaming.server.state import ServerState

log = logging.getLogger(__name__)

_END = json.dumps({"type": "end"})
_STATUS = {"unauthorized": 401, "too_large": 413, "overloaded": 503}
MAX_PARTS = 32  # form fields, the file among them


class FileLink:
    """A session's connection that reads a recording: its blocks as audio frames, then ``end``;
    what the session would send goes nowhere (the dialect keeps the finals)."""

    def __init__(self, transport: asyncio.Transport, blocks: Iterator[np.ndarray], request: BodyRequest, server: ServerState):
        self._transport = transport
        self._blocks = blocks
        self._request = request
        self._server = server
        self._ended = False
        self.samples = 0
        self.error: media.MediaError | None = None

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    async def recv(self) -> str | bytes:
        if self._request.gone or self._server.draining or self._ended:
            raise websockets.ConnectionClosedOK(None, None)  # the session ends with what it heard
        try:
            block = await asyncio.to_thread(next, self._blocks, None)
        except media.MediaError as error:
            self.error = error  # part of the file decoded, the rest not: said, not hidden
            raise websockets.ConnectionClosedOK(None, None) from None
        if self._request.gone or self._server.draining:  # while the block was being decoded
            raise websockets.ConnectionClosedOK(None, None)
        if block is None:
            self._ended = True
            return _END
        self.samples += len(block)
        return block.tobytes()

    async def send(self, message: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def ping(self) -> asyncio.Future[float]:
        raise RuntimeError("a file is never pinged (its keepalive interval is 0)")


async def handle(server: ServerState, request: BodyRequest) -> Answer:
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    try:
        return await _transcribe(server, request)
    except MultipleValuesError as error:
        return Answer(HTTPStatus.BAD_REQUEST, OpenAIError(f"header given more than once: {error}").body(request_id).encode("utf-8"))
    except OpenAIError as error:
        server.metrics.errors[error.code] += 1
        return Answer(error.status, error.body(request_id).encode("utf-8"))


async def _transcribe(server: ServerState, request: BodyRequest) -> Answer:
    try:
        _, query = split_path(request.path)
        room = query.get("room") or request_room()
        parse_publish({"room": room, **({"speaker": query["speaker"]} if "speaker" in query else {})})
    except ProtocolError as error:
        raise OpenAIError(error.message) from None
    client = client_from(request.peer, request.headers, query, server.trusted)
    try:
        server.access.authorize(client.token, room, "publish", client.forwarded)
    except ProtocolError as error:
        raise OpenAIError(error.message, 401) from None
    if server.draining or server.engine.overloaded:
        raise OpenAIError("the server is at capacity; try again later", 503)
    if server.transcriptions >= server.config.max_transcriptions:
        raise OpenAIError(f"the server is transcribing as many files as it takes at once ({server.config.max_transcriptions}); "
                          "retry when one is done", 429)
    limit = server.config.max_transcription_bytes
    if (request.declared_length or 0) > limit:
        raise OpenAIError(f"Maximum content size limit ({limit}) exceeded ({request.declared_length} bytes received)", 413)
    content_type, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise OpenAIError("send the file as multipart/form-data (the file field holds the recording)")
    server.transcriptions += 1
    release = True
    try:
        try:
            body = await request.body(limit)
        except BodyError as error:
            raise OpenAIError(error.message, error.status.value) from None
        fields, audio = await asyncio.to_thread(read_form, body, boundary)
        del body
        if audio is None:
            raise OpenAIError("you must provide a file parameter (the recording)")
        asked = parse_form(fields, query, room)
        try:
            server.settings.session_language(asked.publish.room, asked.publish.language, ())
        except ProtocolError as error:
            raise OpenAIError(error.message) from None
        blocks = media.blocks(audio, server.config.max_transcription_audio_s)
        try:
            first = await asyncio.to_thread(next, blocks, None)
        except media.MediaError as error:
            raise OpenAIError(str(error)) from None
        if first is None:
            raise OpenAIError("the file holds no audio")
        run = _Run(server, request, client, asked, itertools.chain([first], blocks))
        if asked.stream:
            release = False  # the stream releases its place when it ends
            return Answer(HTTPStatus.OK, run.events(), "text/event-stream")
        await run.session()
        body_text, content_type_out = run.render()
        return Answer(HTTPStatus.OK, body_text.encode("utf-8"), content_type_out)
    finally:
        if release:
            server.transcriptions -= 1


class _Run:
    """One request's session, run to its last final."""

    def __init__(self, server: ServerState, request: BodyRequest, client: Client, asked: FileRequest, blocks: Iterator[np.ndarray]):
        self.server = server
        self.client = client
        self.asked = asked
        self.finals: asyncio.Queue[Final] = asyncio.Queue()
        self.dialect = FileDialect(asked, on_final=self.finals.put_nowait)
        self.link = FileLink(request.transport, blocks, request, server)

    async def session(self) -> None:
        """Caption the whole file; raises OpenAIError if the session is refused or the file
        cannot be decoded to its end."""
        server, client = self.server, self.client
        try:
            server.connections.acquire("publish", client.address)
        except ProtocolError as error:
            raise OpenAIError(error.message, 429) from None
        try:
            await publish.serve_publisher(server, self.link, {}, client, Keepalive(self.link, 0), self.dialect, self.asked.publish)
        except ProtocolError as error:
            raise OpenAIError(error.message, _STATUS.get(error.code, 400)) from None
        finally:
            server.connections.release("publish", client.address)
        if self.link.error is not None:
            raise OpenAIError(f"{self.link.error} (after {self.duration:.1f} s; the finals of that much are in the room)")
        if self.server.draining:
            raise OpenAIError("the server is shutting down; send the file again", 503)

    @property
    def duration(self) -> float:
        return self.link.samples / SAMPLE_RATE

    def render(self) -> tuple[str, str]:
        return render(self.asked, self.dialect.finals, self.dialect.language, self.duration)

    async def events(self) -> AsyncGenerator[bytes, None]:
        """``stream=true``: one event per final as it is made, then the whole text."""
        try:
            running = asyncio.ensure_future(self.session())
            sent = 0
            try:
                while True:
                    waiting = asyncio.ensure_future(self.finals.get())
                    await asyncio.wait({waiting, running}, return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():
                        waiting.cancel()
                        break
                    yield stream_delta(waiting.result(), first=sent == 0)
                    sent += 1
                while not self.finals.empty():
                    yield stream_delta(self.finals.get_nowait(), first=sent == 0)
                    sent += 1
                try:
                    running.result()
                except OpenAIError as error:
                    yield stream_error(error.message)  # headers went out with 200: the error is the last event
                    return
                except Exception:
                    log.exception("streamed transcription failed")
                    yield stream_error("internal server error")
                    return
                yield stream_done(self.dialect.finals, self.dialect.language)
            finally:
                with contextlib.suppress(Exception):
                    await running  # the client left: the session ends with what it heard (its error is ours to take)
        finally:
            self.server.transcriptions -= 1


def read_form(body: bytes, boundary: bytes) -> tuple[dict[str, list[str]], bytes | None]:
    """A multipart/form-data body as its text fields (every value of each) and the ``file``
    part's bytes. Blocking (a body of megabytes): off the event loop."""
    fields: dict[str, list[str]] = {}
    audio: bytes | None = None
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise OpenAIError(f"the form has more than {MAX_PARTS} fields")
        parts.append(({}, []))

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1][1].append(chunk[start:end])

    def header_field(chunk: bytes, start: int, end: int) -> None:
        header[0] += chunk[start:end]

    def header_value(chunk: bytes, start: int, end: int) -> None:
        header[1] += chunk[start:end]

    def header_end() -> None:
        parts[-1][0][header[0].lower()] = header[1]
        header[0], header[1] = b"", b""

    parser = MultipartParser(boundary, {
        "on_part_begin": begin, "on_part_data": data, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except OpenAIError:
        raise
    except Exception as error:  # python-multipart's parse errors
        raise OpenAIError(f"the multipart/form-data body could not be read: {error}") from None
    for headers, chunks in parts:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        value = b"".join(chunks)
        if name == "file":
            if audio is not None:
                raise OpenAIError("file given more than once")
            audio = value
        elif len(value) > 64 * 1024:
            raise OpenAIError(f"form field {name[:40]!r} is longer than 64 KiB")
        else:
            fields.setdefault(name, []).append(value.decode("utf-8", errors="replace"))
    return fields, audio
