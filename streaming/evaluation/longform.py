"""``flashcaption bench --long-form MINUTES``: minutes of continuous speech, captioned whole?

The recordings of one language are joined back to back, in manifest order, repeated until the
asked length is reached (whole recordings only, so the reference stays exact). Each recording's
leading and trailing silence is trimmed to :data:`TRIM_MARGIN_S` (:func:`sound_frames`: any
sound a little above the recording's own background, so that a soft last word is kept), so a
join is at most twice that of quiet (plus background noise at the edges of a noisy recording):
shorter than most end-of-utterance silences, so utterances run on across recordings and are
also cut at their maximum length, as with a speaker who does not pause. Each recording is also
brought to one speech level (:data:`SPEECH_LEVEL_DBFS`), as one speaker's voice would be;
``levels="recorded"`` keeps the recordings' own levels.

The result is streamed as one publisher (real-time pace, or ``mode=file`` as fast as the server
takes it) by :func:`streaming.evaluation.streams.stream_clip`, which after ``end`` waits for the
server to finish (close the stream) however long minutes of audio take; what is measured:

- word errors over the whole: the recordings' references joined in order against the finals
  joined in order, both written through :func:`streaming.scoring.units` (numbers as digits);
- words lost and doubled at utterance boundaries (:func:`boundary_losses`, goal 0 for both):
  the reference is aligned to the finals' words by an edit-distance backtrace
  (:func:`align`); a run of deleted reference words that sits within one word of a boundary
  between two finals is lost there, and a run of inserted words within one word of a boundary
  whose words repeat words just across it is doubled there;
- the number of finals, the longest final (seconds of audio), final latency, and the server's
  ``flashcaption_final_decodes_cut_total`` (decodes of finals that stopped short) and
  ``flashcaption_final_checks_total`` (finals' tails and heads decoded again, and what they found)
  over the run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
import tempfile
import urllib.request
import uuid
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streaming.client import http_url
from streaming.evaluation.streams import (
    FRAME,
    Clip,
    ServerProcess,
    StreamResult,
    format_stats,
    frame_levels,
    speech_frames,
    stats,
    stream_clip,
)
from streaming.scoring import CHARACTER_LANGUAGES, units

RATE = 16000
DEFAULT_MINUTES = 3.0
# Silence kept before and after each recording's speech: a soft first or last sound (a
# fricative, a breath) may fall under the speech detector's threshold; two margins (0.2 s)
# are well under the shortest end-of-utterance silence (500 ms), so a join never ends one.
TRIM_MARGIN_S = 0.1
SOUND_ABOVE_BACKGROUND_DB = 4.0
# One speaker's level does not jump: each recording is scaled so that its speech frames have
# this RMS level (peaks kept under -1 dBFS). As recorded, the shared set's levels differ by up
# to 30 dB (en_fleurs_test_000 is at -47 dBFS), and after loud speech the server's voice
# detection takes so quiet a continuation for background for seconds: that, not the
# boundaries, would then be most of what is lost (``levels="recorded"`` measures it).
SPEECH_LEVEL_DBFS = -20.0
PEAK_LIMIT = 10 ** (-1 / 20)
# A deletion or insertion run "at" a boundary: at most this many hypothesis words between it
# and the boundary (the alignment may put a lost word one word off when words around it were
# also misread).
BOUNDARY_REACH = 1
CUT_METRIC = "flashcaption_final_decodes_cut_total"
CHECK_METRIC = "flashcaption_final_checks_total"


# -- the audio ----------------------------------------------------------------------------------
@dataclass
class Piece:
    clip: str
    start: float  # seconds into the long-form audio
    end: float
    first_unit: int  # index of its first reference word (unit) in the whole reference
    units: int


@dataclass
class LongForm:
    language: str
    audio: np.ndarray  # float32 mono at RATE
    reference: str  # the recordings' references joined in order
    reference_units: list[str]  # the same, normalised for scoring, numbers as digits
    pieces: list[Piece] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE

    def clip_of(self, unit: int) -> str:
        """The recording (and word of it) the reference unit ``unit`` belongs to."""
        for piece in self.pieces:
            if piece.first_unit <= unit < piece.first_unit + piece.units:
                return f"{piece.clip} word {unit - piece.first_unit + 1}/{piece.units}, at {piece.start:.1f}-{piece.end:.1f} s"
        return "?"


def sound_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    """Boolean per 20 ms frame: louder than the recording's background (its 10th percentile
    level) by :data:`SOUND_ABOVE_BACKGROUND_DB`. Looser than the bench's speech detector
    (15 dB), which took the soft "fly" that ends en_fleurs_test_004, 6 dB above that clip's
    noise, for silence: trimmed by it, the word was gone before the server heard anything."""
    level = frame_levels(samples, rate)
    return level > max(-60.0, float(np.percentile(level, 10)) + SOUND_ABOVE_BACKGROUND_DB)


def trimmed(samples: np.ndarray, rate: int, margin: float = TRIM_MARGIN_S) -> np.ndarray:
    """The samples from ``margin`` seconds before the first frame of sound to ``margin`` after
    the last (all of them if there is none)."""
    sound = np.flatnonzero(sound_frames(samples, rate))
    if not sound.size:
        return samples
    hop = int(rate * FRAME)
    start = max(0, sound[0] * hop - int(margin * rate))
    end = min(len(samples), (sound[-1] + 1) * hop + int(margin * rate))
    return samples[start:end]


def leveled(samples: np.ndarray, rate: int, level_dbfs: float = SPEECH_LEVEL_DBFS) -> np.ndarray:
    """The samples scaled so that their speech frames' RMS is ``level_dbfs`` (less if the peak
    would pass -1 dBFS)."""
    hop = int(rate * FRAME)
    frames = samples[: len(samples) // hop * hop].reshape(-1, hop)
    speech = speech_frames(samples, rate)
    if not speech.any() or not np.abs(samples).max():
        return samples
    rms = float(np.sqrt(np.mean(frames[speech].astype(np.float64) ** 2)))
    gain = min(10 ** (level_dbfs / 20) / rms, PEAK_LIMIT / float(np.abs(samples).max()))
    return (samples * gain).astype(np.float32)


def build_long_form(
    clips: Sequence[Clip], minutes: float = DEFAULT_MINUTES, trim: bool = True, levels: str = "matched"
) -> LongForm:
    """The recordings (all of one language) back to back, no pause added, repeated in order
    until at least ``minutes`` of audio (the last recording is always whole). ``trim``: each
    one's edge silences cut to :data:`TRIM_MARGIN_S`; ``levels``: ``matched`` scales each to
    :data:`SPEECH_LEVEL_DBFS` of speech, ``recorded`` leaves them as they are."""
    if levels not in ("matched", "recorded"):
        raise ValueError(f"levels must be matched or recorded, not {levels}")
    languages = {c.language for c in clips}
    if len(languages) != 1:
        raise ValueError(f"long-form speech is one language; these recordings are {', '.join(sorted(languages)) or 'none'}")
    language = languages.pop()
    loaded = []
    for clip in clips:
        samples, _, rate = clip.audio()
        if rate != RATE:
            import soxr

            samples = soxr.resample(samples, rate, RATE).astype(np.float32)
        if trim:
            samples = trimmed(samples, RATE)
        if levels == "matched":
            samples = leveled(samples, RATE)
        loaded.append((clip, samples, units(clip.reference, language)))
    if not any(len(samples) for _, samples, _ in loaded):
        raise ValueError("the recordings hold no audio")
    parts: list[np.ndarray] = []
    pieces: list[Piece] = []
    reference: list[str] = []
    reference_units: list[str] = []
    at = 0
    while at < minutes * 60 * RATE:
        for clip, samples, words in loaded:
            if at >= minutes * 60 * RATE:
                break
            pieces.append(Piece(clip.id, at / RATE, (at + len(samples)) / RATE, len(reference_units), len(words)))
            parts.append(samples)
            reference.append(clip.reference)
            reference_units.extend(words)
            at += len(samples)
    return LongForm(language, np.concatenate(parts).astype(np.float32), " ".join(reference), reference_units, pieces)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())


# -- alignment and boundaries (pure) ---------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of an alignment: ``ok`` and ``sub`` pair a reference word with a hypothesis
    word; ``del`` is a reference word with none (lost), ``ins`` a hypothesis word with none."""

    op: str
    ref: int | None
    hyp: int | None


# Among alignments with the fewest errors, the one whose substitutions pair the most alike words
# ("000" read as "0", "brown" as "bro"): a secondary cost of up to SIMILARITY_SCALE per edit,
# where a deletion or insertion costs the most.
SIMILARITY_SCALE = 100


@functools.cache
def _unlikeness(a: str, b: str) -> int:
    """0 for the same word, up to SIMILARITY_SCALE for words with no common beginning."""
    if a == b:
        return 0
    common = len(os.path.commonprefix([a, b]))
    return SIMILARITY_SCALE - SIMILARITY_SCALE * common // max(len(a), len(b))


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> list[Step]:
    """A minimum edit-distance alignment (Levenshtein, every edit counting 1), in order.

    Among the alignments with that many edits, substitutions pair alike words (a common
    beginning); remaining ties are broken, from the end, by a substitution, then a deletion."""
    n, m = len(reference), len(hypothesis)
    edit = SIMILARITY_SCALE * (n + m + 1)  # one edit outweighs every secondary cost together
    gap = edit + SIMILARITY_SCALE

    def pair(a: str, b: str) -> int:
        return 0 if a == b else edit + _unlikeness(a, b)

    cost = [[j * gap for j in range(m + 1)]]
    for i in range(1, n + 1):
        ref, above, row = reference[i - 1], cost[i - 1], [i * gap] + [0] * m
        for j in range(1, m + 1):
            row[j] = min(above[j] + gap, row[j - 1] + gap, above[j - 1] + pair(ref, hypothesis[j - 1]))
        cost.append(row)
    steps: list[Step] = []
    i, j = n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + pair(reference[i - 1], hypothesis[j - 1]):
            steps.append(Step("ok" if reference[i - 1] == hypothesis[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + gap:
            steps.append(Step("del", i - 1, None))
            i -= 1
        else:
            steps.append(Step("ins", None, j - 1))
            j -= 1
    return steps[::-1]


@dataclass
class BoundaryEvent:
    kind: str  # "lost" or "doubled"
    boundary: int  # the boundary: how many hypothesis words come before it
    words: list[int]  # reference indices (lost) or hypothesis indices (doubled)


@dataclass
class BoundaryLoss:
    lost: int  # reference words deleted at a boundary between two finals
    doubled: int  # hypothesis words inserted at a boundary that repeat words across it
    boundaries: list[int]  # each boundary: how many hypothesis words come before it
    events: list[BoundaryEvent]
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def boundary_losses(reference: Sequence[str], finals: Sequence[Sequence[str]], reach: int = BOUNDARY_REACH) -> BoundaryLoss:
    """Words lost and doubled where one final ends and the next begins.

    ``finals`` are the finals' words in order (empty finals are no boundary of their own).
    Lost: a run of consecutive deleted reference words whose place in the hypothesis is at most
    ``reach`` words from a boundary; the whole run counts (a decode that stopped early loses
    every word after it). Doubled: a run of inserted hypothesis words of which one is at most
    ``reach`` words from a boundary; each word of it counts that also appears on the other side
    of the boundary, within the run's length plus ``reach`` words.
    """
    hypothesis = [w for words in finals for w in words]
    boundaries: list[int] = []
    at = 0
    for words in finals[:-1]:
        at += len(words)
        if 0 < at < len(hypothesis) and (not boundaries or boundaries[-1] != at):
            boundaries.append(at)
    steps = align(reference, hypothesis)
    events: list[BoundaryEvent] = []
    lost: set[int] = set()
    doubled: set[int] = set()
    k = 0
    heard = 0  # hypothesis words before step k
    while k < len(steps):
        op = steps[k].op
        if op in ("ok", "sub"):
            k, heard = k + 1, heard + 1
            continue
        end = k
        while end < len(steps) and steps[end].op == op:
            end += 1
        run = steps[k:end]
        if op == "del":
            gap = heard  # the run sits after this many hypothesis words
            near = [b for b in boundaries if abs(gap - b) <= reach]
            if near:
                deleted = [s.ref for s in run if s.ref is not None]
                lost.update(deleted)
                events.append(BoundaryEvent("lost", min(near, key=lambda b: abs(gap - b)), deleted))
        else:
            first, last = run[0].hyp, run[-1].hyp
            assert first is not None and last is not None
            heard += len(run)
            for b in boundaries:
                if first > b + reach or last < b - 1 - reach:
                    continue  # every word of the run is more than ``reach`` words from b
                span = len(run) + reach
                repeats = [
                    j
                    for j in range(first, last + 1)
                    if hypothesis[j] in (hypothesis[b : b + span] if j < b else hypothesis[max(0, b - span) : b])
                ]
                fresh = [j for j in repeats if j not in doubled]
                if fresh:
                    doubled.update(fresh)
                    events.append(BoundaryEvent("doubled", b, fresh))
        k = end
    return BoundaryLoss(
        lost=len(lost),
        doubled=len(doubled),
        boundaries=boundaries,
        events=events,
        substitutions=sum(s.op == "sub" for s in steps),
        deletions=sum(s.op == "del" for s in steps),
        insertions=sum(s.op == "ins" for s in steps),
    )


# -- a run --------------------------------------------------------------------------------------
def labelled_counts(url: str) -> dict[str, dict[str, int]]:
    """The server's counters of final decodes cut short (by reason) and of the checks of finals'
    tails and heads (by outcome), as ``{metric: {label: count}}``."""
    with urllib.request.urlopen(http_url(url) + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts: dict[str, dict[str, int]] = {CUT_METRIC: {}, CHECK_METRIC: {}}
    for name, found in counts.items():
        for match in re.finditer(rf'^{name}{{\w+="([^"]*)"}} (\S+)$', text, re.MULTILINE):
            found[match.group(1)] = int(float(match.group(2)))
    return counts


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {label: n - before.get(label, 0) for label, n in after.items() if n - before.get(label, 0)}


@dataclass
class LongStream:
    result: StreamResult
    finals: list[dict[str, Any]]  # the final messages, in order (times on the session's audio clock)
    send_seconds: float  # wall time from the first chunk sent to ``end``
    drain_seconds: float  # from ``end`` sent to the server closing the stream (or giving up)
    closed: str  # how the stream ended: "closed by the server" when every final is in


async def stream_long_form(url: str, clip: Clip, speed: float | None, room: str, wait_s: float) -> LongStream:
    """``clip`` streamed as any bench stream is, waiting up to ``wait_s`` after ``end`` for the
    server to close."""
    result = await stream_clip(url, clip, 0, speed, room, wait_s=wait_s)
    return LongStream(result, result.final_messages, result.send_seconds, result.drain_seconds, result.closed)


def _context(words: Sequence[str], start: int, end: int, around: int = 4) -> str:
    before = " ".join(words[max(0, start - around) : start])
    inside = " ".join(words[start:end])
    after = " ".join(words[end : end + around])
    return f"{before} [{inside}] {after}".strip()


def describe(form: LongForm, finals: Sequence[Sequence[str]], result: BoundaryLoss) -> list[dict[str, Any]]:
    """Each boundary event with its words in context: where, in which recording."""
    hypothesis = [w for words in finals for w in words]
    described = []
    for event in result.events:
        b = event.boundary
        entry: dict[str, Any] = {
            "kind": event.kind,
            "words": len(event.words),
            "finals": f"...{' '.join(hypothesis[max(0, b - 5) : b])} | {' '.join(hypothesis[b : b + 5])}...",
        }
        if event.kind == "lost":
            entry["reference"] = _context(form.reference_units, event.words[0], event.words[-1] + 1)
            entry["recording"] = form.clip_of(event.words[0])
        else:
            entry["hypothesis"] = _context(hypothesis, event.words[0], event.words[-1] + 1)
        described.append(entry)
    return described


def cut_log(server: ServerProcess | None) -> list[str]:
    """The server's log lines about final decodes that stopped short (a started server only)."""
    if server is None:
        return []
    try:
        lines = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if "stopped short" in line]


def run_long_form(
    url: str,
    clips: Sequence[Clip],
    minutes: float = DEFAULT_MINUTES,
    speed: float | None = 1.0,
    trim: bool = True,
    server: ServerProcess | None = None,
    levels: str = "matched",
) -> dict[str, Any]:
    """Build the long-form audio, stream it as one publisher, and measure (see the module)."""
    try:
        form = build_long_form(clips, minutes, trim, levels)
    except ValueError as error:
        raise SystemExit(f"--long-form: {error} (choose one language with --langs)") from None
    room = f"bench-longform-{form.language}-{uuid.uuid4().hex[:8]}"
    counts_before = labelled_counts(url)
    cpu_before = server.cpu_seconds() if server else None
    with tempfile.TemporaryDirectory(prefix="flashcaption-longform-") as folder:
        path = Path(folder) / "longform.wav"
        write_wav(path, form.audio)
        clip = Clip(f"longform-{form.language}", form.language, form.reference, path)
        # Generous: a file sent faster than it is decoded is captioned after its end.
        stream = asyncio.run(stream_long_form(url, clip, speed, room, wait_s=120 + 2 * form.seconds))
    streamed = stream.result
    counts_after = labelled_counts(url)
    texts = [t for t in streamed.finals if t.strip()]
    finals = [units(t, form.language) for t in texts]
    measured = boundary_losses(form.reference_units, finals)
    times = [(float(m["start"]), float(m["end"])) for m in stream.finals if m["text"].strip()]
    report: dict[str, Any] = {
        "language": form.language,
        "unit": "characters" if form.language.split("-")[0] in CHARACTER_LANGUAGES else "words",
        "audio_seconds": form.seconds,
        "recordings": len(form.pieces),
        "distinct_recordings": len({p.clip for p in form.pieces}),
        "trim_margin_s": TRIM_MARGIN_S if trim else None,
        "levels": f"matched ({SPEECH_LEVEL_DBFS:g} dBFS speech)" if levels == "matched" else "as recorded",
        "speed": speed,
        "reference_units": len(form.reference_units),
        "word_errors": measured.errors,
        "word_error_rate": measured.errors / max(1, len(form.reference_units)),
        "substitutions": measured.substitutions,
        "deletions": measured.deletions,
        "insertions": measured.insertions,
        "lost_at_boundaries": measured.lost,
        "doubled_at_boundaries": measured.doubled,
        "boundaries": len(measured.boundaries),
        "finals": len(texts),
        "longest_final_s": max((end - start for start, end in times), default=None),
        "final_latency": stats([u.final_latency for u in streamed.utterances]),
        "behind_real_time_s": streamed.behind_seconds,
        "send_seconds": stream.send_seconds,
        "drain_seconds": stream.drain_seconds,
        "closed": stream.closed,
        "protocol_errors": streamed.errors,
        "final_decodes_cut": _grown(counts_before[CUT_METRIC], counts_after[CUT_METRIC]),
        "final_checks": _grown(counts_before[CHECK_METRIC], counts_after[CHECK_METRIC]),
        "cut_log": cut_log(server),
        "boundary_events": describe(form, finals, measured),
        "final_texts": texts,
        "final_times": times,
        "joins_s": [p.start for p in form.pieces[1:]],
        "reference": form.reference,
    }
    if server is not None and cpu_before is not None:
        report["cpu_per_audio_second"] = (server.cpu_seconds() - cpu_before) / form.seconds
        report["peak_rss_mb"] = server.peak_rss_mb()
    return report


def print_long_form_report(entry: dict[str, Any], out: TextIO = sys.stdout) -> None:
    unit = entry["unit"]
    trim = f"edges trimmed to {entry['trim_margin_s']:.2f} s of silence" if entry["trim_margin_s"] is not None else "untrimmed"
    print(
        f"\nlong-form ({entry['language']}): {entry['audio_seconds'] / 60:.2f} min of continuous speech, "
        f"{entry['recordings']} recordings ({entry['distinct_recordings']} distinct) back to back, {trim}, "
        f"levels {entry['levels']}; speed={entry['speed'] or 'max'}",
        file=out,
    )
    rate_name = "CER" if unit == "characters" else "WER"
    print(
        f"  {rate_name} (numbers as digits)   {entry['word_error_rate']:.4f}   ({entry['word_errors']} errors in "
        f"{entry['reference_units']} {unit}: {entry['substitutions']} sub, {entry['deletions']} del, {entry['insertions']} ins)",
        file=out,
    )
    print(
        f"  lost at boundaries       {entry['lost_at_boundaries']}   doubled at boundaries {entry['doubled_at_boundaries']}"
        f"   (goal 0 each; {entry['boundaries']} boundaries)",
        file=out,
    )
    longest = entry["longest_final_s"]
    print(f"  finals                   {entry['finals']}   longest {'-' if longest is None else f'{longest:.1f} s'}", file=out)
    print(f"  final latency (s)        {format_stats(entry['final_latency'])}", file=out)
    cuts = ", ".join(f"{reason} {n}" for reason, n in sorted(entry["final_decodes_cut"].items())) or "none"
    print(f"  final decodes cut short  {cuts}", file=out)
    checks = ", ".join(f"{outcome} {n}" for outcome, n in sorted(entry.get("final_checks", {}).items())) or "none"
    print(f"  finals checked again     {checks}", file=out)
    if entry.get("cpu_per_audio_second") is not None:
        print(f"  server CPU s / audio s   {entry['cpu_per_audio_second']:.3f}   peak RSS {entry['peak_rss_mb']:.0f} MB", file=out)
    print(f"  behind real time (max)   {entry['behind_real_time_s']:.2f} s   errors {len(entry['protocol_errors'])}", file=out)
    print(f"  sent in                  {entry['send_seconds']:.1f} s; stream closed {entry['drain_seconds']:.1f} s after its end", file=out)
    if entry["closed"] != "closed by the server":
        print(f"  INCOMPLETE: {entry['closed']}; finals after that are missing", file=out)
    for event in entry["boundary_events"]:
        if event["kind"] == "lost":
            print(f"  lost {event['words']}: {event['reference']}  ({event['recording']}; finals {event['finals']})", file=out)
        else:
            print(f"  doubled {event['words']}: {event['hypothesis']}  (finals {event['finals']})", file=out)
