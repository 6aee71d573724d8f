"""``flashcaption soak``: publishers and viewers for minutes on end; every final must reach every
viewer once, in order, while memory stays flat.

With ``--faults``, the clients misbehave as real ones do: publishers take turns streaming a
recording steadily, dropping mid-utterance and resuming their session, or sending it as fast as
the socket takes it (``mode=file``); a third of the viewers drop their connection now and then
and resume with ``since``, another third stop reading for a while (the server may close them:
they resume too). The check is the journal: at the end each room's finals, as the server wrote
them, must be exactly what each of its viewers got across its connections, in order, once; and
every final a publisher was sent must be among them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import websockets
from websockets.asyncio.client import connect

from streaming.client import captions_url, http_url, publish_url, to_pcm16
from streaming.evaluation.streams import (
    CHUNK_SECONDS,
    TAIL_SILENCE_SECONDS,
    Clip,
    ServerProcess,
    StreamResult,
    format_stats,
    load_manifest,
    progress,
    stats,
    stream_clip,
)

# With --faults: how long a stalled viewer reads nothing (past the server's 30 s stall limit),
# and how often a viewer's fault comes; shorter runs scale both down.
STALL_S = 45.0
FAULT_EVERY_S = (15.0, 40.0)
VIEWER_FAULTS = ("steady", "drop", "stall")
PUBLISHER_TURNS = ("steady", "drop", "fast")


class _Viewer:
    """One viewer of a room across its connections: every final's seq, in the order received."""

    def __init__(self, room: str, fault: str, seed: int, run_s: float):
        self.room = room
        self.fault = fault
        self.seqs: list[int] = []
        self._random = random.Random(seed)
        self.stall_s = min(STALL_S, run_s / 3)
        self.fault_every_s = (min(FAULT_EVERY_S[0], run_s / 6), min(FAULT_EVERY_S[1], run_s / 3))

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def watch(self, url: str, errors: list[dict], faults: collections.Counter[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._connection(url, errors, faults, stop)
            except websockets.ConnectionClosed as closed:
                faults[f"viewer closed by the server ({closed.rcvd.code if closed.rcvd else 'no close frame'})"] += 1
            except OSError as error:
                errors.append({"type": "error", "code": "viewer_connect", "message": str(error)})
            if not stop.is_set():
                await asyncio.sleep(self._random.uniform(0.2, 2.0))  # then resume with since

    async def _connection(self, url: str, errors: list[dict], faults: collections.Counter[str], stop: asyncio.Event) -> None:
        async with connect(captions_url(url, self.room, since=self.last), max_size=2**22, close_timeout=1) as ws:
            ready = json.loads(await ws.recv())
            if ready["type"] != "ready":
                errors.append(ready)
                return
            fault_at = time.monotonic() + self._random.uniform(*self.fault_every_s) if self.fault != "steady" else float("inf")
            while not stop.is_set():
                if time.monotonic() >= fault_at:
                    if self.fault == "drop":
                        faults["viewer drops"] += 1
                        ws.transport.abort()
                        return
                    faults["viewer stalls"] += 1
                    await asyncio.sleep(self.stall_s)  # reads nothing meanwhile
                    fault_at = time.monotonic() + self._random.uniform(*self.fault_every_s)
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                except TimeoutError:
                    continue
                if message["type"] == "final":
                    self.seqs.append(message["seq"])
                elif message["type"] == "error":
                    errors.append(message)


async def _stream_with_faults(url: str, clip: Clip, stream: int, room: str, turn: str, rng: random.Random,
                              faults: collections.Counter[str]) -> tuple[list[int], list[dict]]:
    """One recording, ``drop``: at real-time pace, cut off mid-way (no close), resumed a moment
    later on a new connection with the rest of the audio; or ``fast``: as fast as the socket
    takes it. Returns the seqs of the finals the publisher was sent, and its errors."""
    audio, _, rate = clip.audio()
    audio = np.concatenate([audio, np.zeros(int(rate * TAIL_SILENCE_SECONDS), np.float32)])
    step = int(rate * CHUNK_SECONDS)
    chunks = [to_pcm16(audio[offset : offset + step]) for offset in range(0, len(audio), step)]
    seqs: list[int] = []
    errors: list[dict] = []

    async def receive(ws: Any) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "final":
                    seqs.append(message["seq"])
                elif message["type"] == "error":
                    errors.append(message)
        except websockets.ConnectionClosed:
            pass

    query: dict[str, Any] = dict(room=room, sample_rate=rate, speaker=f"soak{stream}", mode="file" if turn == "fast" else "live")
    cut = int(len(chunks) * rng.uniform(0.3, 0.7)) if turn == "drop" else len(chunks)
    sent = 0
    while True:
        # A recording sends no pings: they would wait behind audio the server has not read yet.
        pings = None if turn == "fast" else 20
        async with connect(publish_url(url, **query), max_size=2**22, close_timeout=1, ping_interval=pings) as ws:
            ready = json.loads(await ws.recv())
            if ready["type"] != "ready":
                errors.append(ready)
                return seqs, errors
            receiver = asyncio.create_task(receive(ws))
            started = time.monotonic()
            for index, chunk in enumerate(chunks[sent:cut]):
                if turn != "fast":
                    await asyncio.sleep(max(0.0, started + index * CHUNK_SECONDS - time.monotonic()))
                await ws.send(chunk)
            sent = cut
            if sent < len(chunks):  # the drop: mid-utterance, no close handshake
                faults["publisher drops"] += 1
                ws.transport.abort()
                receiver.cancel()
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                query = dict(query, resume=ready["session"])
                cut = len(chunks)
                continue
            await ws.send(json.dumps({"type": "end"}))
            try:
                await asyncio.wait_for(receiver, timeout=120)
            except TimeoutError:
                errors.append({"type": "error", "code": "timeout", "message": "no close 120 s after end"})
        if "resume" in query:
            faults["publisher resumes"] += 1
        if turn == "fast":
            faults["recordings sent as fast as possible"] += 1
        return seqs, errors


def _journal(url: str, room: str) -> list[int]:
    """The seqs of the room's finals, as the server wrote them."""
    with urllib.request.urlopen(f"{http_url(url)}/v1/rooms/{room}/transcript?format=json", timeout=60) as answer:
        return [final["seq"] for final in json.loads(answer.read())["finals"]]


async def _soak(
    url: str, clips: list[Clip], publishers: int, viewers: int, seconds: float, server: ServerProcess | None, out: TextIO,
    with_faults: bool = False, seed: int = 1,
) -> dict[str, Any]:
    rooms = [f"soak-{i}" for i in range(publishers)]
    stop = asyncio.Event()
    errors: list[dict] = []
    faults: collections.Counter[str] = collections.Counter()
    watching = [
        _Viewer(rooms[v % publishers], VIEWER_FAULTS[v % 3] if with_faults else "steady", seed + v, seconds) for v in range(viewers)
    ]
    watchers = [asyncio.create_task(viewer.watch(url, errors, faults, stop)) for viewer in watching]
    await asyncio.sleep(1.0)
    memory = [(0.0, server.rss_mb())] if server else []
    started = time.monotonic()
    results: list[StreamResult] = []
    acknowledged: dict[str, list[int]] = {room: [] for room in rooms}

    async def publish(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        turn = index  # publishers start on different recordings (and, with faults, different turns)
        while time.monotonic() - started < seconds:
            clip = clips[turn % len(clips)]
            kind = PUBLISHER_TURNS[turn % len(PUBLISHER_TURNS)] if with_faults else "steady"
            turn += 1
            try:
                if kind == "steady":
                    result = await stream_clip(url, clip, index, 1.0, rooms[index])
                    results.append(result)
                    acknowledged[rooms[index]] += result.seqs
                    errors.extend(result.errors)
                else:
                    seqs, failures = await _stream_with_faults(url, clip, index, rooms[index], kind, rng, faults)
                    acknowledged[rooms[index]] += seqs
                    errors.extend(failures)
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                # Counted, and the soak goes on: one failed connection must not hide the rest.
                errors.append({"type": "error", "code": "publisher_connect", "message": f"{kind} {clip.id}: {error!r}"})

    async def sample_memory(server: ServerProcess) -> None:
        while True:
            await asyncio.sleep(10)
            memory.append((time.monotonic() - started, server.rss_mb()))
            progress(min(int(time.monotonic() - started), int(seconds)), int(seconds), "soak")

    sampler = asyncio.create_task(sample_memory(server)) if server else None
    await asyncio.gather(*(publish(i) for i in range(publishers)))
    if server and sampler:
        sampler.cancel()
        memory.append((time.monotonic() - started, server.rss_mb()))
    journal = {room: await asyncio.to_thread(_journal, url, room) for room in rooms}
    # Viewers in a stall or between connections catch up before the count.
    deadline = time.monotonic() + max(v.stall_s for v in watching) + 30 if watching else time.monotonic()
    while time.monotonic() < deadline and any(v.last < (journal[v.room] or [0])[-1] for v in watching):  # noqa: ASYNC110 (polls many viewers)
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    lost = sum(len(set(journal[v.room]) - set(v.seqs)) for v in watching)
    repeated = sum(len(v.seqs) - len(set(v.seqs)) for v in watching)
    out_of_order = sum(sum(1 for a, b in zip(v.seqs, v.seqs[1:]) if b <= a) for v in watching)
    unjournaled = sum(len(set(acknowledged[room]) - set(journal[room])) for room in rooms)
    utterances = [u for r in results for u in r.utterances]
    report: dict[str, Any] = {
        "publishers": publishers, "viewers": viewers, "minutes": round((time.monotonic() - started) / 60, 2),
        "faults": dict(faults) if with_faults else None,
        "recordings_streamed": len(results) + faults["publisher drops"] + faults["recordings sent as fast as possible"],
        "finals": sum(len(seqs) for seqs in journal.values()),
        "acknowledged_finals": sum(len(seqs) for seqs in acknowledged.values()),
        "lost_finals": lost, "repeated_finals": repeated, "out_of_order_finals": out_of_order,
        "acknowledged_not_journaled": unjournaled,
        "errors": errors,
        "memory_mb": memory, "final_latency": stats([u.final_latency for u in utterances]),
        "tail_latency": stats([u.tail_latency for u in utterances]),
    }
    mem = f"{memory[0][1]:.0f} MB at start, {max(m for _, m in memory):.0f} MB at most, {memory[-1][1]:.0f} MB at the end" if memory else "n/a (--url)"
    print(f"soak: {publishers} publishers, {viewers} viewers, {report['minutes']} min, {report['recordings_streamed']} recordings, "
          f"{report['finals']} finals", file=out)
    if with_faults:
        print(f"  faults: {', '.join(f'{name} {count}' for name, count in sorted(faults.items())) or 'none happened'}", file=out)
    print(f"  server memory {mem}", file=out)
    print(f"  lost finals {lost}, repeated {repeated}, out of order {out_of_order}, acknowledged but not journaled {unjournaled}, "
          f"errors {len(errors)}", file=out)
    print(f"  final latency (s) {format_stats(report['final_latency'])}{'  (steady turns only)' if with_faults else ''}", file=out)
    print(f"  tail latency (s)  {format_stats(report['tail_latency'])}", file=out)
    return report


def run_soak(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    clips = load_manifest(Path(args.manifest), set(args.langs.split(",")) if args.langs else None)
    server = None if args.url else ServerProcess(["--model", args.model, "--device", args.device, *args.server_args])
    try:
        return asyncio.run(_soak(
            args.url if server is None else server.url, clips, args.publishers, args.viewers, args.minutes * 60, server, out,
            with_faults=args.faults,
        ))
    finally:
        if server:
            server.stop()
