"""Streaming recordings through a server as a client does, and measuring what comes back: the
recordings (a manifest), a server process to measure, one stream's latencies and texts.

Speech boundaries come from the audio itself (frame energy against the clip's own noise
floor), never from what the server reports. Per utterance (per final):

- final latency: last speech sample of the utterance sent -> its final arrived;
- tail latency: end of speech -> the captions on screen (finals so far + current partial)
  first show the utterance's complete final text (its words; case and punctuation aside);
- first-caption latency: speech onset -> first non-empty partial of the utterance.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import connect

from streaming.client import read_wav
from streaming.evaluation.dialects import StreamRefused, bench_client
from streaming.evaluation.noise import Noise, mix
from streaming.scoring import normalize

CHUNK_SECONDS = 0.05
TAIL_SILENCE_SECONDS = 1.5
FRAME = 0.02

GOALS = {
    "tail_latency_p50": 0.4,
    "final_latency_p50": 0.8,
    "final_latency_p95": 1.2,
    "first_caption_p50": 1.0,
    "partials_per_second_min": 2.0,
    "rewrite_share_max": 0.15,
    "capacity_final_latency_p95": 1.5,
}


@dataclass
class Clip:
    id: str
    language: str
    reference: str
    path: Path
    lead_silence: float = 0.0  # seconds of silence streamed (and decoded offline) before the recording
    english: str = ""  # the recording's English reference translation, where the manifest has one (column english)
    noise: Noise | None = None  # mixed into everything streamed (and decoded offline)

    def audio(self, tail: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
        """The samples to stream, with the lead silence and ``tail`` seconds of silence after the
        recording (both noise, if it is mixed with noise), and which 20 ms frames of them are
        speech (found in the clean recording alone: digital silence would move its noise floor)."""
        samples, rate = read_wav(self.path)
        if self.noise is not None and rate != 16_000:
            import soxr

            samples, rate = soxr.resample(samples, rate, 16_000).astype(np.float32), 16_000
        hop = int(rate * FRAME)
        lead_frames, tail_frames = int(round(self.lead_silence / FRAME)), int(round(tail / FRAME))
        speech = np.concatenate([np.zeros(lead_frames, bool), speech_frames(samples, rate), np.zeros(tail_frames, bool)])
        audio = np.concatenate([np.zeros(lead_frames * hop, np.float32), samples, np.zeros(tail_frames * hop, np.float32)])
        if self.noise is not None:
            audio = mix(audio, speech, self.noise, self.id, rate)
        return audio, speech, rate


@dataclass
class Utterance:
    clip: str
    stream: int
    segment: int
    text: str
    final_latency: float | None
    tail_latency: float | None
    first_caption_latency: float | None


@dataclass
class StreamResult:
    clip: str
    stream: int
    finals: list[str]
    seqs: list[int]
    partials: int
    rewrites: int
    speech_seconds: float
    utterances: list[Utterance]
    errors: list[dict] = field(default_factory=list)
    behind_seconds: float = 0.0  # how far sending fell behind real time (server back-pressure)
    languages: list[str] = field(default_factory=list)  # each final's language, as the server said
    final_messages: list[dict] = field(default_factory=list)  # the finals as received, in order
    send_seconds: float = 0.0  # wall time from the first chunk sent to ``end``
    drain_seconds: float = 0.0  # from ``end`` to the server closing the stream (or the wait given up)
    closed: str = ""  # how the stream ended: "closed by the server" when every final is in
    refused: bool = False  # the server refused the stream (at capacity): nothing was streamed
    # With translate=en: (text of the final, its translation, seconds from the final to it) per final translated.
    translations: list[tuple[str, str, float]] = field(default_factory=list)




def load_manifest(path: Path, languages: set[str] | None, lead_silence: float = 0.0) -> list[Clip]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        Clip(r["id"], r["lang"], r["reference"], path.parent / r["wav"], lead_silence, english=r.get("english") or "")
        for r in rows
        if not languages or r["lang"] in languages
    ]


def frame_levels(audio: np.ndarray, rate: int) -> np.ndarray:
    """The level (dBFS) of each whole 20 ms frame."""
    hop = int(rate * FRAME)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    return 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-10)


def speech_frames(audio: np.ndarray, rate: int) -> np.ndarray:
    """Boolean per 20 ms frame: energy well above the clip's own quiet level."""
    level = frame_levels(audio, rate)
    floor = np.percentile(level, 10)
    return (level > max(-55.0, floor + 15.0)) & (level > level.max() - 45.0)


def is_extension(before: str, after: str) -> bool:
    """A partial extends the previous one when every word shown before is still there, in
    place (case and punctuation aside: "north which," -> "north, which chiefly" rewrites no
    word); only the newest word may have grown ("capit" -> "capital")."""
    old, new = normalize(before), normalize(after)
    if len(new) < len(old) or new[: len(old) - 1] != old[:-1]:
        return False
    return not old or new[len(old) - 1].startswith(old[-1])


def _words(text: str) -> list[str]:
    return normalize(text)


async def stream_clip(
    url: str, clip: Clip, stream: int, speed: float | None, room: str, context: str | None = None, wait_s: float = 120.0,
    dialect: str = "native", translate: str | None = None,
) -> StreamResult:
    """Stream ``clip`` (then a tail of silence and ``end``) at ``speed`` (None: as fast as the
    server takes it, as a recording), waiting up to ``wait_s`` after ``end`` for the server to
    close; measure what came back. ``dialect``: protocol v1, or another service's API that the
    server speaks (streaming/evaluation/dialects.py)."""
    audio, speech, rate = clip.audio(tail=TAIL_SILENCE_SECONDS)
    step = int(rate * CHUNK_SECONDS)
    sent_at: list[float] = []  # wall time each chunk was sent
    received: list[tuple[float, dict[str, Any]]] = []
    behind = 0.0
    client = bench_client(dialect)
    mode = "live" if speed == 1.0 else "file"
    query = dict(room=room, sample_rate=rate, speaker=f"bench{stream}", mode=mode, context=context, translate=translate)
    # A recording is read by the server only as fast as it decodes: a keepalive ping would wait
    # behind the audio in the socket, and the client would give up on the server after 40 s.
    try:
        ws = await connect(client.url(url, query), max_size=2**22, ping_interval=20 if mode == "live" else None)
    except websockets.InvalidStatus as refusal:  # another service's API refuses before the upgrade
        raise StreamRefused(f"server refused the stream: HTTP {refusal.response.status_code}") from None
    async with ws:
        if dialect != "deepgram":  # Deepgram says nothing first
            client.first(json.loads(await ws.recv()))
        last_message = time.monotonic()

        async def receive() -> None:
            nonlocal last_message
            async for raw in ws:
                last_message = time.monotonic()
                for message in client.captions(json.loads(raw)):
                    received.append((last_message, message))

        receiver = asyncio.create_task(receive())
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), step)):
            if speed:
                due = started + index * CHUNK_SECONDS / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    behind = max(behind, -delay)
            await ws.send(client.audio(audio[offset : offset + step], rate))
            sent_at.append(time.monotonic())
        await ws.send(client.end())
        ended = time.monotonic()
        closed = "closed by the server"
        try:
            if client.closes_itself:
                # The server keeps such a stream open: it is over once every utterance begun has
                # its final and nothing has come for a second.
                while not (client.settled and time.monotonic() - last_message > 1.0) and not receiver.done() and time.monotonic() - ended < wait_s:
                    await asyncio.wait({receiver}, timeout=0.05)
                closed = "closed by the client, every final in" if client.settled else f"stopped waiting after {wait_s:.0f} s"
                await ws.close()
            await asyncio.wait_for(receiver, timeout=wait_s)
        except TimeoutError:
            closed = f"stopped waiting after {wait_s:.0f} s"
        except websockets.ConnectionClosed as error:
            closed = f"the connection failed: {error}"
    result = _measure(clip, stream, speech, sent_at, received, step, rate, behind)
    result.send_seconds, result.drain_seconds, result.closed = ended - started, time.monotonic() - ended, closed
    return result


def _measure(
    clip: Clip,
    stream: int,
    speech: np.ndarray,
    sent_at: list[float],
    received: list[tuple[float, dict[str, Any]]],
    step: int,
    rate: int,
    behind: float,
) -> StreamResult:
    def sent(seconds: float) -> float:
        index = min(len(sent_at) - 1, int(seconds * rate) // step)
        return sent_at[index]

    errors = [m for _, m in received if m["type"] == "error"]
    finals = [(t, m) for t, m in received if m["type"] == "final"]
    final_by_seq = {m["seq"]: (t, m) for t, m in finals if "seq" in m}
    partials = [(t, m) for t, m in received if m["type"] == "partial"]
    rewrites = 0
    previous: dict[int, str] = {}  # the latest partial text by segment
    for _, m in partials:
        before = previous.get(m["segment"])
        if before is not None and not is_extension(before, m["text"]):
            rewrites += 1
        previous[m["segment"]] = m["text"]

    utterances = []
    shown_finals: list[str] = []
    for arrival, final in finals:
        start_frame, end_frame = int(final["start"] / FRAME), int(np.ceil(final["end"] / FRAME))
        inside = np.flatnonzero(speech[start_frame:end_frame]) + start_frame
        target = _words(" ".join(shown_finals + [final["text"]]))
        final_latency = tail = first = None
        if inside.size and final["text"]:
            onset, last = inside[0] * FRAME, (inside[-1] + 1) * FRAME
            speech_end_sent = sent(last)
            final_latency = arrival - speech_end_sent
            # When did the screen first read the complete final text?
            screen_times = [t for t, m in partials if m["segment"] == final["segment"] and _words(" ".join(shown_finals + [m["text"]])) == target]
            tail = min(screen_times + [arrival]) - speech_end_sent
            firsts = [t for t, m in partials if m["segment"] == final["segment"] and m["text"].strip()]
            first = (min(firsts) if firsts else arrival) - sent(onset)
        shown_finals.append(final["text"])
        utterances.append(Utterance(clip.id, stream, final["segment"], final["text"], final_latency, tail, first))
    return StreamResult(
        clip=clip.id,
        stream=stream,
        finals=[m["text"] for _, m in finals],
        seqs=[m["seq"] for _, m in finals],
        partials=len(partials),
        rewrites=rewrites,
        speech_seconds=float(speech.sum() * FRAME),
        utterances=utterances,
        errors=errors,
        behind_seconds=behind,
        languages=[m["language"] for _, m in finals if m["text"] and m.get("language")],
        final_messages=[m for _, m in finals],
        translations=[(final_by_seq[m["seq"]][1]["text"], m["text"], t - final_by_seq[m["seq"]][0])
                      for t, m in received if m["type"] == "translation" and m.get("seq") in final_by_seq],
    )


# -- the server under test --------------------------------------------------------------------
class ServerProcess:
    def __init__(self, args: list[str]):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        # The bench's captions go to a journal of their own, not the user's.
        self.data_dir = tempfile.TemporaryDirectory(prefix="flashcaption-bench-")
        # The log goes to a file: a pipe nobody reads until the end fills up, and the server
        # then blocks on its next log line (a soak with faults logs plenty).
        self.log_path = Path(self.data_dir.name) / "server.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streaming.cli", "serve", "--port", str(self.port), "--data-dir", self.data_dir.name, *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in time")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.data_dir.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duration(clip: Clip) -> float:
    samples, _, rate = clip.audio()
    return len(samples) / rate


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


# -- a run ------------------------------------------------------------------------------------
def progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:40s}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


async def run_streams(
    url: str, clips: list[Clip], streams: int, speed: float | None, in_step: bool = False, dialect: str = "native"
) -> list[StreamResult]:
    """Each of ``streams`` publishers streams every recording once, one after another. They
    start at different places in the list (publisher s at recording s * n / streams), so their
    utterances begin and end at independent moments, as different rooms' speakers do; with
    ``in_step`` all of them stream the same recording at the same moment instead, so that every
    final is asked for at once (the worst case)."""
    if in_step:
        results: list[StreamResult] = []
        for number, clip in enumerate(clips):
            progress(number, len(clips), clip.id)
            batch = await asyncio.gather(
                *(stream_clip(url, clip, s, speed, room=f"bench-{clip.id[:40]}-{s}", dialect=dialect) for s in range(streams))
            )
            results.extend(batch)
        progress(len(clips), len(clips), "done")
        return results
    done = 0

    async def publisher(stream: int) -> list[StreamResult]:
        nonlocal done
        start = stream * len(clips) // streams
        mine = []
        for clip in clips[start:] + clips[:start]:
            try:
                mine.append(await stream_clip(url, clip, stream, speed, room=f"bench-{clip.id[:40]}-{stream}", dialect=dialect))
            except StreamRefused as refusal:
                # A new stream on a saturated server is refused by design: counted, and this
                # publisher goes on with its next recording.
                mine.append(StreamResult(clip.id, stream, [], [], 0, 0, 0.0, [], errors=[{"message": str(refusal)}], refused=True))
            done += 1
            progress(done, len(clips) * streams, clip.id)
        return mine

    by_publisher = await asyncio.gather(*(publisher(s) for s in range(streams)))
    return [result for mine in by_publisher for result in mine]


def stats(values: Sequence[float | None]) -> dict[str, float] | None:
    """Order statistics of the values there are (None: not measured)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    ordered = sorted(present)

    def rank(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]

    return {
        "n": len(present),
        "p50": statistics.median(ordered),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "min": ordered[0],
        "max": ordered[-1],
    }


def format_stats(stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    tail = f"  p99 {stat['p99']:.3f}" if "p99" in stat else ""
    return f"p50 {stat['p50']:.3f}  p95 {stat['p95']:.3f}{tail}  min {stat['min']:.3f}  max {stat['max']:.3f}  (n={stat['n']})"
