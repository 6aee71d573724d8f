"""``flashcaption bench --nodes``: two nodes sharing one Redis, on this machine. Publishers stream
the recordings at real time to node A, each into a room of its own; viewers of those rooms are
spread over A and B. Every viewer notes when each final reaches it; final latency is that moment
less the end of the final's audio (its wall_start plus its length). The same finals, seen on the
same node and on the other one, give what going through Redis adds."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.client import connect

from streaming.evaluation.redis_server import RedisServer
from streaming.evaluation.streams import Clip, ServerProcess, progress, stats, stream_clip


async def _view(url: str, room: str, seen: list[dict[str, Any]], stop: asyncio.Event) -> None:
    async with connect(f"{url}/v1/captions?room={room}", max_size=2**22) as viewer:
        json.loads(await viewer.recv())  # ready
        while not stop.is_set():
            try:
                message = json.loads(await asyncio.wait_for(viewer.recv(), 0.5))
            except TimeoutError:
                continue
            if message.get("type") == "final" and message.get("text") and "seq" in message:
                arrived = time.time()
                audio_end = message["wall_start"] + message["end"] - message["start"]
                seen.append({"seq": message["seq"], "room": room, "arrived": arrived, "latency": arrived - audio_end})


async def _run(a: str, b: str, clips: list[Clip], publishers: int, viewers: int) -> dict[str, Any]:
    stop = asyncio.Event()
    seen: dict[str, list[dict[str, Any]]] = {"same": [], "other": []}
    watching = []
    for number in range(viewers):
        # In pairs: one on each node, watching the same room, so that each final is seen on both.
        where = "same" if number % 2 == 0 else "other"
        room = f"nodes-{(number // 2) % publishers}"
        watching.append(asyncio.create_task(_view(a if where == "same" else b, room, seen[where], stop)))
    await asyncio.sleep(1.0)  # every viewer in before the first word

    async def publisher(stream: int) -> None:
        start = stream * len(clips) // publishers
        for number, clip in enumerate(clips[start:] + clips[:start]):
            if stream == 0:
                progress(number, len(clips), clip.id)
            await stream_clip(a, clip, stream, 1.0, room=f"nodes-{stream}")

    await asyncio.gather(*(publisher(s) for s in range(publishers)))
    progress(len(clips), len(clips), "done")
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*watching)
    # The same finals compared: for each (room, seq), when it reached the other node's viewers
    # less when it reached the same node's.
    first_same: dict[tuple[str, int], float] = {}
    for entry in seen["same"]:
        key = (entry["room"], entry["seq"])
        first_same[key] = min(first_same.get(key, entry["arrived"]), entry["arrived"])
    added = [e["arrived"] - first_same[(e["room"], e["seq"])] for e in seen["other"] if (e["room"], e["seq"]) in first_same]
    finals = {(e["room"], e["seq"]) for e in seen["same"] + seen["other"]}
    per_viewer_same = len(seen["same"]) / max(1, (viewers + 1) // 2)
    return {
        "publishers": publishers, "viewers": viewers, "finals": len(finals), "finals_per_viewer_same_node": per_viewer_same,
        "finals_per_viewer_other_node": len(seen["other"]) / max(1, viewers // 2),
        "latency_same_node": stats([e["latency"] for e in seen["same"]]),
        "latency_other_node": stats([e["latency"] for e in seen["other"]]),
        "added_by_other_node": stats(added),
    }


def run_nodes_bench(clips: list[Clip], publishers: int, viewers: int, server_args: list[str], store: str | None = None) -> dict[str, Any]:
    """Start Redis (unless ``store`` names one) and two nodes; stream and watch; stop them."""
    with tempfile.TemporaryDirectory(prefix="flashcaption-nodes-") as scratch:
        redis = None if store else RedisServer(Path(scratch) / "redis").start()
        url = store or (redis.url if redis else "")
        nodes = []
        try:
            for name in ("a", "b"):
                nodes.append(ServerProcess(["--store", url, "--node", f"bench-{name}", *server_args]))
            report = asyncio.run(_run(nodes[0].url, nodes[1].url, clips, publishers, viewers))
        finally:
            for node in nodes:
                node.stop()
            if redis is not None:
                redis.stop()
    return report


def print_nodes_report(report: dict[str, Any], out: TextIO = sys.stdout) -> None:
    def line(figures: dict[str, float] | None) -> str:
        if not figures:
            return "none"
        return f"p50 {figures['p50'] * 1000:7.1f} ms   p95 {figures['p95'] * 1000:7.1f} ms   max {figures['max'] * 1000:7.1f} ms   (n={figures['n']})"

    print(f"\ntwo nodes, one Redis: {report['publishers']} publishers on node A, {report['viewers']} viewers spread over A and B; "
          f"{report['finals']} finals", file=out)
    print(f"  final latency, viewers on A (same node)    {line(report['latency_same_node'])}", file=out)
    print(f"  final latency, viewers on B (other node)   {line(report['latency_other_node'])}", file=out)
    print(f"  added on B, the same final                 {line(report['added_by_other_node'])}", file=out)
    print(f"  finals per viewer: A {report['finals_per_viewer_same_node']:.1f}, B {report['finals_per_viewer_other_node']:.1f}", file=out)
