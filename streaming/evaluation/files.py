"""``flashcaption bench --files N``: the recordings captioned through OpenAI's file API
(``POST /v1/audio/transcriptions``), N requests at once, as a client of that API would send them.

Measured: how fast a file is captioned (seconds of audio per second of waiting, per request and
over the whole run), and how well (word or character errors per language against the
references, beside the same model decoding each recording whole offline, when the bench runs
that too).
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from typing import Any, TextIO

from streaming.client import http_url
from streaming.evaluation.streams import Clip, duration, format_stats, progress, stats
from streaming.scoring import error_counts


def transcribe(url: str, clip: Clip, room: str, timeout_s: float = 600.0) -> tuple[str, float]:
    """The recording's text as the file API gives it, and the seconds the request took."""
    boundary = f"bench-{uuid.uuid4().hex}"
    head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                   for name, value in (("model", "whisper-1"), ("response_format", "json")))
    body = (head + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{clip.path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + clip.path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{http_url(url)}/v1/audio/transcriptions?room={room}", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            text = json.loads(answer.read())["text"]
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{clip.id}: HTTP {error.code}: {error.read()[:300]!r}") from None
    return text, time.monotonic() - started


def run_files(url: str, clips: list[Clip], concurrency: int) -> dict[str, Any]:
    """Every recording once, ``concurrency`` requests at a time."""
    seconds = {c.id: duration(c) for c in clips}
    results: dict[str, tuple[str, float]] = {}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(transcribe, url, clip, f"bench-files-{number % concurrency}"): clip for number, clip in enumerate(clips)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            clip = futures[future]
            results[clip.id] = future.result()
            progress(done, len(clips), clip.id)
    wall = time.monotonic() - started
    languages: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for clip in clips:
        errors, units = error_counts(clip.reference, results[clip.id][0], clip.language)
        languages[clip.language][0] += errors
        languages[clip.language][1] += units
    audio = sum(seconds.values())
    return {
        "concurrency": concurrency,
        "audio_seconds": audio,
        "wall_seconds": wall,
        "audio_per_wall_second": audio / wall,
        "request_audio_per_second": stats([seconds[c.id] / results[c.id][1] for c in clips]),
        "request_seconds": stats([results[c.id][1] for c in clips]),
        "languages": {lang: {"errors": e, "units": u, "error_rate": e / max(1, u)} for lang, (e, u) in languages.items()},
        "texts": {c.id: results[c.id][0] for c in clips},
    }


def print_files(report: dict[str, Any], out: TextIO) -> None:
    files = report["files"]
    print(f"\nfile transcription (POST /v1/audio/transcriptions), {files['concurrency']} at once, "
          f"{files['audio_seconds']:.0f} s of audio in {files['wall_seconds']:.1f} s: "
          f"{files['audio_per_wall_second']:.1f} s of audio per second", file=out)
    print(f"  per request, audio s / s waited   {format_stats(files['request_audio_per_second'])}", file=out)
    print(f"  per request, seconds              {format_stats(files['request_seconds'])}", file=out)
    if "cpu_per_audio_second" in files:
        print(f"  server CPU s / audio s   {files['cpu_per_audio_second']:.3f}   peak RSS {files['peak_rss_mb']:.0f} MB", file=out)
    for language, entry in sorted(files["languages"].items()):
        line = f"  {language}: error rate {entry['error_rate']:.4f} ({entry['errors']} of {entry['units']})"
        if "offline_error_rate" in entry:
            line += f"   offline {entry['offline_error_rate']:.4f}"
        print(line, file=out)
