"""The user's side: stream a file or the microphone to a server, watch a room."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection, connect

CHUNK_SECONDS = 0.1


class ClientError(RuntimeError):
    """The server refused or ended the stream with an error."""


class Redirected(ClientError):
    """The server is too busy and names another node (sharing its store) to connect to."""

    def __init__(self, message: str, retry_url: str):
        super().__init__(message)
        self.retry_url = retry_url

    def moved(self, url: str) -> str:
        """``url`` on the other node: its scheme, host and port; the same path and query."""
        target, here = urlsplit(self.retry_url), urlsplit(url)
        return urlunsplit((target.scheme, target.netloc, here.path, here.query, ""))


# How many nodes in a row a publisher follows when each is too busy.
MAX_HOPS = 3


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of a PCM WAV file (8-32 bit, any channels)."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            raw = wav.readframes(wav.getnframes())
    except wave.Error as error:
        raise ClientError(f"{path}: not a PCM WAV file ({error}); convert it, e.g. with sox or ffmpeg") from None
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        padded = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        as_int = (padded[:, 0].astype(np.int32) | padded[:, 1].astype(np.int32) << 8 | padded[:, 2].astype(np.int32) << 16)
        samples = ((as_int << 8) >> 8).astype(np.float32) / 8388608
    else:
        samples = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def http_url(base: str) -> str:
    """The server's HTTP address for its WebSocket address (``ws://`` → ``http://``)."""
    if base.startswith(("ws://", "wss://")):
        base = "http" + base[2:]
    return base.rstrip("/")


def publish_url(base: str, **params: Any) -> str:
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{base.rstrip('/')}/v1/publish?{urlencode(query)}"


def captions_url(base: str, room: str, since: int | None = None, token: str | None = None) -> str:
    query = {"room": room} | ({"since": since} if since is not None else {}) | ({"token": token} if token else {})
    return f"{base.rstrip('/')}/v1/captions?{urlencode(query)}"


class CaptionPrinter:
    """Shows captions as a person reads them: on a terminal the partial is redrawn in place
    and each final stays; elsewhere (a pipe) one line per final, or JSON lines with --json."""

    def __init__(self, out: TextIO = sys.stdout, json_lines: bool = False, show_speaker: bool = False, lang: str = "original"):
        self.out = out
        self.lang = lang  # "original", "en" (each final's translation instead) or "both"
        self.json_lines = json_lines
        self.show_speaker = show_speaker
        self.live = out.isatty() and not json_lines
        self._partial_shown = False
        # Finals shown before the server's store numbered them (it was away): the numbered one
        # that follows for the same session and segment is not shown again.
        self._unnumbered: set[tuple[str, int]] = set()

    def __call__(self, message: dict[str, Any]) -> None:
        if self.json_lines:
            print(json.dumps(message, ensure_ascii=False), file=self.out, flush=True)
            return
        kind = message.get("type")
        label = f"{message.get('speaker') or message.get('session', '')[:6]}: " if self.show_speaker else ""
        if kind == "partial" and self.live:
            self.out.write("\r\x1b[2K\x1b[2m" + label + message["text"] + "\x1b[0m")
            self.out.flush()
            self._partial_shown = True
        elif kind == "final":
            if self.live and self._partial_shown:
                self.out.write("\r\x1b[2K")
            self._partial_shown = False
            key = (message.get("session", ""), message.get("segment", -1))
            if "seq" not in message:
                self._unnumbered.add(key)
            elif key in self._unnumbered:
                self._unnumbered.discard(key)
                return
            if message["text"] and self.lang != "en":
                print(label + message["text"], file=self.out, flush=True)
        elif kind == "translation" and self.lang != "original":
            if message["text"]:
                print(("  → " if self.lang == "both" else label) + message["text"], file=self.out, flush=True)
        elif kind == "correction":
            if self.live and self._partial_shown:
                self.out.write("\r\x1b[2K")
            self._partial_shown = False
            who = f" by {message['editor']}" if message.get("editor") else ""
            label = f"{message.get('speaker')}: " if self.show_speaker and message.get("speaker") else ""
            print(f"[#{message['seq']} corrected{who}] {label}{message['text']}", file=self.out, flush=True)
        elif kind == "error":
            print(f"error ({message.get('code')}): {message.get('message')}", file=sys.stderr, flush=True)


async def _receive(connection: ClientConnection, on_message: Callable[[dict], None]) -> list[dict]:
    errors = []
    async for raw in connection:
        message = json.loads(raw)
        if message.get("type") == "error":
            errors.append(message)
        on_message(message)
    return errors


async def _expect_ready(connection: ClientConnection) -> dict:
    message = json.loads(await connection.recv())
    if message.get("type") != "ready":
        if message.get("code") == "overloaded" and isinstance(message.get("retry_url"), str):
            raise Redirected(message.get("message", ""), message["retry_url"])
        raise ClientError(f"server refused the stream: {message.get('message', message)}")
    return message


@dataclass
class StreamResult:
    ready: dict
    errors: list[dict]
    close_code: int | None


async def stream_samples(
    url: str,
    chunks: AsyncIterator[bytes],
    on_message: Callable[[dict], None],
    recording: bool = False,
) -> StreamResult:
    """Send PCM16 chunks from an async iterator, then ``end``; collect until the server closes.
    A ``recording`` (mode=file) sends no keepalive pings: the server reads it only as fast as
    it decodes, and a ping would wait behind the audio until the client gave up on the server.
    A server too busy that names another node (``retry_url``) is left for that node, at most
    MAX_HOPS times in a row."""
    for hop in range(MAX_HOPS + 1):
        try:
            return await _stream_once(url, chunks, on_message, recording)
        except Redirected as refusal:
            if hop == MAX_HOPS:
                raise ClientError(f"server refused the stream: {refusal} (and {MAX_HOPS} other nodes were busy too)") from None
            url = refusal.moved(url)
            print(f"server busy; captioning on {refusal.retry_url} instead", file=sys.stderr)
    raise AssertionError("unreachable")


async def _stream_once(url: str, chunks: AsyncIterator[bytes], on_message: Callable[[dict], None], recording: bool) -> StreamResult:
    async with connect(url, max_size=2**22, ping_interval=None if recording else 20) as connection:
        ready = await _expect_ready(connection)
        receiver = asyncio.create_task(_receive(connection, on_message))
        try:
            async for chunk in chunks:
                await connection.send(chunk)
                if receiver.done():
                    break
            if not receiver.done():
                await connection.send(json.dumps({"type": "end"}))
            errors = await receiver
        except websockets.ConnectionClosed:
            errors = await receiver
        return StreamResult(ready, errors, connection.close_code)


async def paced_chunks(samples: np.ndarray, rate: int, speed: float | None) -> AsyncIterator[bytes]:
    """Chunks of ``CHUNK_SECONDS`` as PCM16, at ``speed`` times real time (None: no pacing)."""
    step = int(rate * CHUNK_SECONDS)
    started = time.monotonic()
    for index, offset in enumerate(range(0, len(samples), step)):
        if speed:
            delay = started + index * CHUNK_SECONDS / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield to_pcm16(samples[offset : offset + step])


async def stream_file(
    base_url: str,
    path: Path,
    on_message: Callable[[dict], None],
    speed: float | None = 1.0,
    trailing_silence: float = 1.0,
    **params: Any,
) -> StreamResult:
    samples, rate = read_wav(path)
    if trailing_silence:
        samples = np.concatenate([samples, np.zeros(int(rate * trailing_silence), np.float32)])
    # Faster than real time is a file, not a live speaker: say so, or the server refuses it.
    mode = "live" if speed == 1.0 else "file"
    url = publish_url(base_url, sample_rate=rate, encoding="pcm_s16le", mode=mode, **params)
    return await stream_samples(url, paced_chunks(samples, rate, speed), on_message, recording=mode == "file")


async def stream_microphone(
    base_url: str, on_message: Callable[[dict], None], device: str | int | None = None, **params: Any
) -> StreamResult:
    import sounddevice  # only here: servers and CI have no PortAudio

    rate = 16000
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_audio(data, frames, when, status) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, bytes(data))

    async def chunks() -> AsyncIterator[bytes]:
        # Ctrl-C ends the audio; the server then sends the last finals and closes.
        loop.add_signal_handler(signal.SIGINT, queue.put_nowait, None)
        try:
            with sounddevice.RawInputStream(
                samplerate=rate, channels=1, dtype="int16", blocksize=int(rate * CHUNK_SECONDS), device=device, callback=on_audio
            ):
                print("listening; Ctrl-C to stop", file=sys.stderr)
                while (chunk := await queue.get()) is not None:
                    yield chunk
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    url = publish_url(base_url, sample_rate=rate, encoding="pcm_s16le", **params)
    return await stream_samples(url, chunks(), on_message)


async def watch_room(
    base_url: str, room: str, on_message: Callable[[dict], None], since: int | None = None, token: str | None = None
) -> None:
    async with connect(captions_url(base_url, room, since, token), max_size=2**22) as connection:
        await _expect_ready(connection)
        await _receive(connection, on_message)
