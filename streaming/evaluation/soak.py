"""``flashcaption soak``: publishers and viewers for minutes on end; every final must reach every viewer
once, in order, while memory stays flat."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.client import connect

from streaming.evaluation.streams import (
    Clip,
    ServerProcess,
    StreamResult,
    format_stats,
    load_manifest,
    progress,
    stats,
    stream_clip,
)


# -- soak ---------------------------------------------------------------------------------------
async def _watch(url: str, room: str, seqs: list[int], errors: list[dict], stop: asyncio.Event) -> None:
    async with connect(f"{url}/v1/captions?room={room}", max_size=2**22) as ws:
        await ws.recv()

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "final":
                    seqs.append(message["seq"])
                elif message["type"] == "error":
                    errors.append(message)

        reader = asyncio.create_task(read())
        await stop.wait()
        reader.cancel()


async def _soak(
    url: str, clips: list[Clip], publishers: int, viewers: int, seconds: float, server: ServerProcess | None, out: TextIO
) -> dict[str, Any]:
    rooms = [f"soak-{i}" for i in range(publishers)]
    stop = asyncio.Event()
    seen: list[list[int]] = [[] for _ in range(viewers)]
    errors: list[dict] = []
    watchers = [asyncio.create_task(_watch(url, rooms[v % publishers], seen[v], errors, stop)) for v in range(viewers)]
    await asyncio.sleep(1.0)
    memory = [(0.0, server.rss_mb())] if server else []
    started = time.monotonic()
    results: list[StreamResult] = []

    async def publish(index: int) -> None:
        turn = index  # publishers start on different recordings
        while time.monotonic() - started < seconds:
            results.append(await stream_clip(url, clips[turn % len(clips)], index, 1.0, rooms[index]))
            turn += 1

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
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    published = {room: sorted(s for r in results if r.stream == i for s in r.seqs) for i, room in enumerate(rooms)}
    lost = sum(len(set(published[rooms[v % publishers]]) - set(seen[v])) for v in range(viewers))
    repeated = sum(len(s) - len(set(s)) for s in seen)
    utterances = [u for r in results for u in r.utterances]
    report: dict[str, Any] = {
        "publishers": publishers, "viewers": viewers, "minutes": round((time.monotonic() - started) / 60, 2),
        "recordings_streamed": len(results), "finals": sum(len(v) for v in published.values()),
        "lost_finals": lost, "repeated_finals": repeated,
        "errors": errors + [e for r in results for e in r.errors],
        "memory_mb": memory, "final_latency": stats([u.final_latency for u in utterances]),
        "tail_latency": stats([u.tail_latency for u in utterances]),
    }
    mem = f"{memory[0][1]:.0f} MB at start, {memory[-1][1]:.0f} MB at the end" if memory else "n/a (--url)"
    print(f"soak: {publishers} publishers, {viewers} viewers, {report['minutes']} min, {len(results)} recordings, "
          f"{report['finals']} finals", file=out)
    print(f"  server memory {mem}", file=out)
    print(f"  lost finals {lost}, repeated {repeated}, errors {len(report['errors'])}", file=out)
    print(f"  final latency (s) {format_stats(report['final_latency'])}", file=out)
    print(f"  tail latency (s)  {format_stats(report['tail_latency'])}", file=out)
    return report


def run_soak(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    clips = load_manifest(Path(args.manifest), set(args.langs.split(",")) if args.langs else None)
    server = None if args.url else ServerProcess(["--model", args.model, "--device", args.device, *args.server_args])
    try:
        return asyncio.run(_soak(args.url if server is None else server.url, clips, args.publishers, args.viewers, args.minutes * 60, server, out))
    finally:
        if server:
            server.stop()

