"""``flashcaption bench``: latency, throughput and accuracy, measured from the client side.

Each recording of a manifest is streamed through ``/v1/publish`` by N concurrent publishers
(at real-time pace, or as fast as the server takes it), followed by a tail of silence.
Speech boundaries come from the audio itself (frame energy against the clip's own noise
floor), never from what the server reports. Per utterance (per final):

- final latency: last speech sample of the utterance sent -> its final arrived;
- tail latency: end of speech -> the captions on screen (finals so far + current partial)
  first show the utterance's complete final text (its words; case and punctuation aside);
- first-caption latency: speech onset -> first non-empty partial of the utterance.

Per clip: partials per second of speech and the share of partials that rewrite (are not an
extension of) the previous one, word by word (see :func:`is_extension`); WER/CER of the finals against the reference, next to the
same model decoding the whole clip offline. Per run: server CPU seconds per audio second and
peak resident memory, read from /proc for the server process the bench started.
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
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import connect

from streaming.client import publish_url, read_wav, to_pcm16
from streaming.nonspeech import NON_SPEECH
from streaming.scoring import CHARACTER_LANGUAGES, error_counts, normalize

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

    def audio(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The samples to stream, with the lead silence, and which 20 ms frames of them are speech
        (found in the recording alone: digital silence would move its noise floor)."""
        samples, rate = read_wav(self.path)
        lead_frames = int(round(self.lead_silence / FRAME))
        silence = np.zeros(lead_frames * int(rate * FRAME), np.float32)
        speech = np.concatenate([np.zeros(lead_frames, bool), speech_frames(samples, rate)])
        return np.concatenate([silence, samples]), speech, rate


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


def load_manifest(path: Path, languages: set[str] | None, lead_silence: float = 0.0) -> list[Clip]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        Clip(r["id"], r["lang"], r["reference"], path.parent / r["wav"], lead_silence)
        for r in rows
        if not languages or r["lang"] in languages
    ]


def speech_frames(audio: np.ndarray, rate: int) -> np.ndarray:
    """Boolean per 20 ms frame: energy well above the clip's own quiet level."""
    hop = int(rate * FRAME)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    level = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-10)
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
    url: str, clip: Clip, stream: int, speed: float | None, room: str, context: str | None = None
) -> StreamResult:
    audio, speech, rate = clip.audio()
    audio = np.concatenate([audio, np.zeros(int(rate * TAIL_SILENCE_SECONDS), np.float32)])
    step = int(rate * CHUNK_SECONDS)
    sent_at: list[float] = []  # wall time each chunk was sent
    received: list[tuple[float, dict]] = []
    behind = 0.0
    mode = "live" if speed == 1.0 else "file"
    query = dict(room=room, sample_rate=rate, speaker=f"bench{stream}", mode=mode, context=context)
    async with connect(publish_url(url, **query), max_size=2**22) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"server refused the stream: {ready}")

        async def receive() -> None:
            async for raw in ws:
                received.append((time.monotonic(), json.loads(raw)))

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
            await ws.send(to_pcm16(audio[offset : offset + step]))
            sent_at.append(time.monotonic())
        await ws.send(json.dumps({"type": "end"}))
        try:
            await asyncio.wait_for(receiver, timeout=120)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            pass
    return _measure(clip, stream, speech, sent_at, received, step, rate, behind)


def _measure(clip, stream, speech, sent_at, received, step, rate, behind) -> StreamResult:
    def sent(seconds: float) -> float:
        index = min(len(sent_at) - 1, int(seconds * rate) // step)
        return sent_at[index]

    errors = [m for _, m in received if m["type"] == "error"]
    finals = [(t, m) for t, m in received if m["type"] == "final"]
    partials = [(t, m) for t, m in received if m["type"] == "partial"]
    rewrites, previous = 0, {}
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
        languages=[m.get("language", "") for _, m in finals if m["text"]],
    )


# -- the server under test --------------------------------------------------------------------
class ServerProcess:
    def __init__(self, args: list[str]):
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        # The bench's captions go to a journal of their own, not the user's.
        self.data_dir = tempfile.TemporaryDirectory(prefix="flashcaption-bench-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streaming.cli", "serve", "--port", str(self.port), "--data-dir", self.data_dir.name, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _duration(clip: Clip) -> float:
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
def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:40s}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


async def run_streams(url: str, clips: list[Clip], streams: int, speed: float | None) -> list[StreamResult]:
    results: list[StreamResult] = []
    for number, clip in enumerate(clips):
        _progress(number, len(clips), clip.id)
        batch = await asyncio.gather(
            *(stream_clip(url, clip, s, speed, room=f"bench-{clip.id[:40]}-{s}") for s in range(streams))
        )
        results.extend(batch)
    _progress(len(clips), len(clips), "done")
    return results


def offline_texts(clips: list[Clip], model_name: str, device: str, beam_size: int = 1) -> dict[str, str]:
    """Each whole clip decoded in one go, with the beam the server's finals use."""
    from decoder.api import DecodeOptions, transcribe
    from decoder.models import load_model
    from decoder.runtime import RuntimeOptions

    import soxr

    model = load_model(model_name, RuntimeOptions(device=device))
    texts = {}
    for clip in clips:
        audio, _, rate = clip.audio()
        if rate != 16000:
            audio = soxr.resample(audio, rate, 16000)
        texts[clip.id] = transcribe(model, audio, options=DecodeOptions(beam_size=beam_size)).text
    return texts


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def offline_errors(clips: list[Clip], texts: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Per language: (errors, reference words or characters) of the offline transcripts."""
    totals = {}
    for language in sorted({c.language for c in clips}):
        counted = [error_counts(c.reference, texts[c.id], language) for c in clips if c.language == language]
        totals[language] = (sum(e for e, _ in counted), sum(n for _, n in counted))
    return totals


def summarize(clips: list[Clip], results: list[StreamResult]) -> dict[str, Any]:
    by_id = {c.id: c for c in clips}
    utterances = [u for r in results for u in r.utterances]
    languages: dict[str, dict[str, Any]] = {}
    for language in sorted({c.language for c in clips}):
        mine = [r for r in results if by_id[r.clip].language == language]
        streamed = [error_counts(by_id[r.clip].reference, " ".join(r.finals), language) for r in mine]
        # Language identification, per stream: the language most of its finals were given.
        identified = [bool(r.languages) and max(set(r.languages), key=r.languages.count) == language for r in mine]
        languages[language] = {
            "clips": len({r.clip for r in mine}),
            "units": sum(n for _, n in streamed),  # reference words (characters for zh, ja...)
            "streaming_errors": sum(e for e, _ in streamed),
            "streaming_error_rate": sum(e for e, _ in streamed) / max(1, sum(n for _, n in streamed)),
            "language_id_share": sum(identified) / max(1, len(identified)),
        }
    speech = sum(r.speech_seconds for r in results)
    partials = sum(r.partials for r in results)
    return {
        "final_latency": _stats([u.final_latency for u in utterances]),
        "tail_latency": _stats([u.tail_latency for u in utterances]),
        "first_caption_latency": _stats([u.first_caption_latency for u in utterances]),
        "partials_per_second_of_speech": partials / speech if speech else None,
        "rewrite_share": sum(r.rewrites for r in results) / partials if partials else None,
        "errors": [e for r in results for e in r.errors],
        "max_behind_real_time_s": max((r.behind_seconds for r in results), default=0.0),
        "languages": languages,
    }


def _fmt(stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    return f"p50 {stat['p50']:.3f}  p95 {stat['p95']:.3f}  min {stat['min']:.3f}  max {stat['max']:.3f}  (n={stat['n']})"


def print_report(report: dict[str, Any], out=sys.stdout) -> None:
    m = report["machine"]
    print(f"FlashCaption bench: model {report['model']} on {report['device']}; {m['cpu']}, {m['cores']} cores", file=out)
    if report.get("lead_silence"):
        print(f"each recording streamed and decoded after {report['lead_silence']:.2f} s of silence", file=out)
    if "context" in report:
        print_context_report(report["context"], out)
    for run in report["runs"]:
        s = run["summary"]
        print(f"\nstreams={run['streams']} speed={run['speed'] or 'max'} audio={run['audio_seconds']:.0f}s", file=out)
        print(f"  final latency (s)        {_fmt(s['final_latency'])}", file=out)
        print(f"  tail latency (s)         {_fmt(s['tail_latency'])}", file=out)
        print(f"  first caption (s)        {_fmt(s['first_caption_latency'])}", file=out)
        if s["partials_per_second_of_speech"] is not None:
            print(f"  partials per speech s    {s['partials_per_second_of_speech']:.2f}", file=out)
            print(f"  rewrite share            {s['rewrite_share']:.3f}", file=out)
        for language, entry in s["languages"].items():
            unit = "CER" if language in CHARACTER_LANGUAGES else "WER"
            line = f"  {language} {unit} streaming        {entry['streaming_error_rate']:.4f}"
            if "offline_error_rate" in entry:
                line += f"   offline {entry['offline_error_rate']:.4f}"
                # Few clips: one word is several points, so the counts go along.
                line += f" ({entry['streaming_errors']} vs {entry['offline_errors']} of {entry['units']})"
            print(line + f"   language right {entry['language_id_share']:.0%}   ({entry['clips']} clips)", file=out)
        if run.get("cpu_per_audio_second") is not None:
            print(f"  server CPU s / audio s   {run['cpu_per_audio_second']:.3f}   peak RSS {run['peak_rss_mb']:.0f} MB", file=out)
        print(f"  behind real time (max)   {s['max_behind_real_time_s']:.2f} s   errors {len(s['errors'])}", file=out)
    if report.get("non_speech") is not None:
        print("\nnon-speech (30 s each): " + ", ".join(f"{k}: {v} captions" for k, v in report["non_speech"].items()), file=out)
    if report.get("capacity") is not None:
        print(f"\nlargest N meeting p95 final latency <= {GOALS['capacity_final_latency_p95']} s without falling behind: {report['capacity']}", file=out)


async def non_speech_captions(url: str, seconds: float = 30.0) -> dict[str, int]:
    """Stream generated silence, pink noise and music; count captions (should be none)."""
    counts = {}
    for name in ("silence", "pink_noise", "music"):
        audio = NON_SPEECH[name](seconds)
        messages = []
        async with connect(publish_url(url, room=f"bench-{name}", mode="file"), max_size=2**22) as ws:
            await ws.recv()
            for offset in range(0, len(audio), 16000):
                await ws.send(to_pcm16(audio[offset : offset + 16000]))
            await ws.send(json.dumps({"type": "end"}))
            async for raw in ws:
                messages.append(json.loads(raw))
        counts[name] = sum(1 for m in messages if m["type"] in ("partial", "final"))
    return counts


def run_bench(args) -> dict[str, Any]:
    clips = load_manifest(Path(args.manifest), set(args.langs.split(",")) if args.langs else None, args.lead_silence)
    if not clips:
        raise SystemExit(f"no recordings for languages {args.langs} in {args.manifest}")
    server = None
    if args.url:
        url = args.url
    else:
        extra = ["--model", args.model, "--device", args.device, *args.server_args]
        server = ServerProcess(extra)
        url = server.url
    try:
        health = json.loads(urllib.request.urlopen(url.replace("ws://", "http://").replace("wss://", "https://") + "/healthz", timeout=10).read())
        report: dict[str, Any] = {"machine": machine(), "model": health["model"], "device": health["device"], "runs": []}
        report["lead_silence"] = args.lead_silence
        if getattr(args, "context", None):
            term_lists = json.loads(Path(args.context).read_text(encoding="utf-8"))
            clips = [c for c in clips if c.id in term_lists["clips"]]
            results = asyncio.run(run_context_streams(url, clips, term_lists, args.speed))
            report["context"] = summarize_context(clips, term_lists, results)
            return report
        counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.streams]
        capacity = None
        for streams in counts:
            cpu_before = server.cpu_seconds() if server else None
            results = asyncio.run(run_streams(url, clips, streams, args.speed))
            audio_seconds = sum(_duration(c) for c in clips) * streams
            run: dict[str, Any] = {"streams": streams, "speed": args.speed, "audio_seconds": audio_seconds}
            run["summary"] = summarize(clips, results)
            run["utterances"] = [asdict(u) for r in results for u in r.utterances]
            run["clips"] = [{"clip": r.clip, "stream": r.stream, "finals": r.finals, "languages": r.languages} for r in results]
            if server:
                run["cpu_per_audio_second"] = (server.cpu_seconds() - cpu_before) / audio_seconds
                run["peak_rss_mb"] = server.peak_rss_mb()
            report["runs"].append(run)
            p95 = (run["summary"]["final_latency"] or {}).get("p95", float("inf"))
            if p95 <= GOALS["capacity_final_latency_p95"] and run["summary"]["max_behind_real_time_s"] < 0.5:
                capacity = streams
        if args.sweep:
            report["capacity"] = capacity
        if not args.no_offline:
            texts = offline_texts(clips, health["model"], "cpu", health.get("final_beam_size", 1))
            report["offline_texts"] = texts
            offline = offline_errors(clips, texts)
            for run in report["runs"]:
                for language, (errors, units) in offline.items():
                    entry = run["summary"]["languages"][language]
                    entry["offline_errors"] = errors * run["streams"]  # counted as often as streamed
                    entry["offline_error_rate"] = errors / max(1, units)
        if not args.no_non_speech:
            report["non_speech"] = asyncio.run(non_speech_captions(url))
    finally:
        if server:
            server.stop()
    return report


# -- context biasing -------------------------------------------------------------------------------
CONTEXT_CONDITIONS = ("none", "terms", "unrelated")


def said(term: str, text: str) -> bool:
    """Whether ``term`` appears in ``text`` as whole words (case and punctuation aside)."""
    wanted, words = normalize(term), normalize(text)
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def context_query(terms: list[str]) -> str:
    return json.dumps({"terms": terms}, ensure_ascii=False, separators=(",", ":"))


async def run_context_streams(url: str, clips: list[Clip], term_lists: dict[str, Any], speed: float | None) -> dict[str, list[StreamResult]]:
    """Each recording under three contexts: none; its spoken terms mixed with as many
    distractors (order fixed, spoken ones not first); and an unrelated list."""
    results: dict[str, list[StreamResult]] = {condition: [] for condition in CONTEXT_CONDITIONS}
    for number, clip in enumerate(clips):
        _progress(number, len(clips), clip.id)
        entry = term_lists["clips"][clip.id]
        mixed = [t for pair in zip(entry["distractors"], entry["spoken"]) for t in pair]
        contexts = {"none": None, "terms": context_query(mixed), "unrelated": context_query(term_lists["unrelated"])}
        for condition in CONTEXT_CONDITIONS:
            room = f"bench-context-{condition}-{clip.id[:40]}"
            results[condition].append(await stream_clip(url, clip, 0, speed, room=room, context=contexts[condition]))
    _progress(len(clips), len(clips), "done")
    return results


def summarize_context(clips: list[Clip], term_lists: dict[str, Any], results: dict[str, list[StreamResult]]) -> dict[str, Any]:
    by_id = {c.id: c for c in clips}
    summary: dict[str, Any] = {}
    for condition, runs in results.items():
        spoken = [(r.clip, t) for r in runs for t in term_lists["clips"][r.clip]["spoken"]]
        distractors = [(r.clip, t) for r in runs for t in term_lists["clips"][r.clip]["distractors"]]
        texts = {r.clip: " ".join(r.finals) for r in runs}
        counted = [error_counts(by_id[r.clip].reference, texts[r.clip], "en") for r in runs]
        utterances = [u for r in runs for u in r.utterances]
        summary[condition] = {
            "term_recall": sum(said(t, texts[c]) for c, t in spoken) / len(spoken),
            "missed_terms": [f"{c}: {t}" for c, t in spoken if not said(t, texts[c])],
            "false_alarm_rate": sum(said(t, texts[c]) for c, t in distractors) / len(distractors),
            "false_alarms": [f"{c}: {t}" for c, t in distractors if said(t, texts[c])],
            "word_error_rate": sum(e for e, _ in counted) / max(1, sum(n for _, n in counted)),
            "final_latency": _stats([u.final_latency for u in utterances]),
            "tail_latency": _stats([u.tail_latency for u in utterances]),
            "terms": (len(spoken), len(distractors)),
        }
    return summary


def print_context_report(summary: dict[str, Any], out=sys.stdout) -> None:
    names = {"none": "no context", "terms": "spoken terms + distractors", "unrelated": "unrelated terms"}
    spoken, distractors = summary["none"]["terms"]
    print(f"\ncontext biasing ({spoken} spoken terms, {distractors} distractors):", file=out)
    for condition, entry in summary.items():
        print(
            f"  {names[condition]:28s} term recall {entry['term_recall']:.3f}   false alarms {entry['false_alarm_rate']:.3f}"
            f"   WER {entry['word_error_rate']:.4f}",
            file=out,
        )
        print(f"  {'':28s} final latency {_fmt(entry['final_latency'])}", file=out)
        if entry["missed_terms"]:
            print(f"  {'':28s} missed: {', '.join(entry['missed_terms'])}", file=out)
        if entry["false_alarms"] and condition != "none":
            print(f"  {'':28s} false alarms: {', '.join(entry['false_alarms'])}", file=out)


def journal_bench(count: int, out=sys.stdout) -> dict[str, Any]:
    """Write ``count`` finals to a fresh journal one by one (as the server does), then time the
    replay and the exports of that room."""
    from streaming.export import render
    from streaming.journal import Journal

    with tempfile.TemporaryDirectory(prefix="flashcaption-journal-") as directory:
        journal = Journal(Path(directory) / "journal.sqlite3")
        # A busy neighbour room, so queries must use the index rather than scan one room.
        for seq in range(1, 1001):
            journal.append(_fake_final("other", seq), 0.0, 1.0)
        latencies = []
        for seq in range(1, count + 1):
            started = time.perf_counter()
            journal.append(_fake_final("big", seq), seq * 3.0, seq * 3.0 + 2.5)
            latencies.append(time.perf_counter() - started)
        timings: dict[str, Any] = {"finals": count, "append": _stats(latencies)}
        for name, action in (
            ("last_seq", lambda: journal.last_seq("big")),
            ("since_last_100", lambda: journal.finals("big", count - 100)),
            ("read_all", lambda: journal.finals("big")),
        ):
            started = time.perf_counter()
            action()
            timings[name] = time.perf_counter() - started
        rows = journal.finals("big")
        for format in ("srt", "vtt", "json", "txt"):
            started = time.perf_counter()
            render(rows, format)
            timings[f"export_{format}"] = time.perf_counter() - started
        timings["file_mb"] = sum(p.stat().st_size for p in Path(directory).iterdir()) / 1e6
        journal.close()
    a = timings["append"]
    print(f"journal: {count} finals appended one at a time (synced): p50 {a['p50'] * 1000:.2f} ms  "
          f"p95 {a['p95'] * 1000:.2f} ms  max {a['max'] * 1000:.1f} ms; file {timings['file_mb']:.0f} MB", file=out)
    print(f"  last seq {timings['last_seq'] * 1000:.2f} ms, since (last 100) {timings['since_last_100'] * 1000:.2f} ms, "
          f"read all {timings['read_all']:.2f} s", file=out)
    print("  export " + ", ".join(f"{f} {timings[f'export_{f}']:.2f} s" for f in ("srt", "vtt", "json", "txt")) + " (plus the read)", file=out)
    return timings


def _fake_final(room: str, seq: int) -> dict[str, Any]:
    return {"room": room, "seq": seq, "session": "bench", "speaker": "Speaker", "segment": seq, "language": "en",
            "text": "It was the first great sorrow of his life, not so much the loss of the cotton itself.",
            "start": seq * 3.0, "end": seq * 3.0 + 2.5}


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


async def _soak(url, clips, publishers, viewers, seconds, server, out) -> dict[str, Any]:
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

    async def sample_memory() -> None:
        while True:
            await asyncio.sleep(10)
            memory.append((time.monotonic() - started, server.rss_mb()))
            _progress(min(int(time.monotonic() - started), int(seconds)), int(seconds), "soak")

    sampler = asyncio.create_task(sample_memory()) if server else None
    await asyncio.gather(*(publish(i) for i in range(publishers)))
    if sampler:
        sampler.cancel()
        memory.append((time.monotonic() - started, server.rss_mb()))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    published = {room: sorted(s for r in results if r.stream == i for s in r.seqs) for i, room in enumerate(rooms)}
    lost = sum(len(set(published[rooms[v % publishers]]) - set(seen[v])) for v in range(viewers))
    repeated = sum(len(s) - len(set(s)) for s in seen)
    utterances = [u for r in results for u in r.utterances]
    report = {
        "publishers": publishers, "viewers": viewers, "minutes": round((time.monotonic() - started) / 60, 2),
        "recordings_streamed": len(results), "finals": sum(len(v) for v in published.values()),
        "lost_finals": lost, "repeated_finals": repeated,
        "errors": errors + [e for r in results for e in r.errors],
        "memory_mb": memory, "final_latency": _stats([u.final_latency for u in utterances]),
        "tail_latency": _stats([u.tail_latency for u in utterances]),
    }
    mem = f"{memory[0][1]:.0f} MB at start, {memory[-1][1]:.0f} MB at the end" if memory else "n/a (--url)"
    print(f"soak: {publishers} publishers, {viewers} viewers, {report['minutes']} min, {len(results)} recordings, "
          f"{report['finals']} finals", file=out)
    print(f"  server memory {mem}", file=out)
    print(f"  lost finals {lost}, repeated {repeated}, errors {len(report['errors'])}", file=out)
    print(f"  final latency (s) {_fmt(report['final_latency'])}", file=out)
    print(f"  tail latency (s)  {_fmt(report['tail_latency'])}", file=out)
    return report


def run_soak(args, out=sys.stdout) -> dict[str, Any]:
    clips = load_manifest(Path(args.manifest), set(args.langs.split(",")) if args.langs else None)
    server = None if args.url else ServerProcess(["--model", args.model, "--device", args.device, *args.server_args])
    try:
        return asyncio.run(_soak(args.url or server.url, clips, args.publishers, args.viewers, args.minutes * 60, server, out))
    finally:
        if server:
            server.stop()
