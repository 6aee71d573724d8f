"""A room's transcript as SRT, WebVTT, JSON or plain text, from journal rows.

Cue times are on the event's wall clock (each session's start plus its audio clock), counted
from the room's first caption, or on the session clock (``clock="session"``, for a recording
made of one session). Subtitle cues keep to 2 lines of at most 42 characters; a longer final is
split into several cues, its time shared out by length.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from typing import Any

FORMATS = ("srt", "vtt", "json", "txt")
MAX_LINE = 42
MAX_LINES = 2
CONTENT_TYPES = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
}


def _times(rows: list[dict[str, Any]], clock: str) -> list[tuple[float, float]]:
    if clock == "session":
        return [(r["start"], r["end"]) for r in rows]
    origin = min((r["wall_start"] for r in rows), default=0.0)
    return [(r["wall_start"] - origin, r["wall_end"] - origin) for r in rows]


def _pieces(text: str) -> list[str]:
    """Split text into cue texts of at most MAX_LINES lines of MAX_LINE characters."""
    lines = textwrap.wrap(text, MAX_LINE, break_long_words=True) or [""]
    return ["\n".join(lines[i : i + MAX_LINES]) for i in range(0, len(lines), MAX_LINES)]


def _cue_safe(text: str) -> str:
    """Text that cannot end a cue or start a timing line inside one: no line breaks of its own
    and no timing arrow (speaker names and captions are a client's words)."""
    return " ".join(text.split()).replace("-->", "->")


def cues(rows: list[dict[str, Any]], clock: str = "wall") -> Iterable[tuple[float, float, str, str]]:
    """(start, end, speaker, text) per cue, both cue-safe."""
    for row, (start, end) in zip(rows, _times(rows, clock)):
        text = _cue_safe(row["text"])
        if not text:
            continue
        pieces = _pieces(text)
        total = sum(len(p) for p in pieces)
        end = max(end, start + 0.5)
        at = start
        for piece in pieces:
            span = (end - start) * len(piece) / total
            yield at, at + span, _cue_safe(row["speaker"]), piece
            at += span


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _speakers(rows: list[dict[str, Any]]) -> bool:
    return len({r["speaker"] for r in rows}) > 1 or any(r["speaker"] for r in rows)


def to_srt(rows: list[dict[str, Any]], clock: str = "wall") -> str:
    label = _speakers(rows)
    blocks = []
    for number, (start, end, speaker, text) in enumerate(cues(rows, clock), 1):
        if label and speaker:
            text = f"{speaker}: {text}" if len(speaker) + len(text.split("\n")[0]) + 2 <= MAX_LINE else f"{speaker}:\n{text}"
        blocks.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(rows: list[dict[str, Any]], clock: str = "wall") -> str:
    label = _speakers(rows)
    blocks = ["WEBVTT\n"]
    for start, end, speaker, text in cues(rows, clock):
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        if label and speaker:
            escaped = f"<v {speaker.replace('>', '')}>{escaped}"
        blocks.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{escaped}\n")
    return "\n".join(blocks)


def to_json(rows: list[dict[str, Any]], clock: str = "wall") -> str:
    return json.dumps({"finals": rows}, ensure_ascii=False, indent=1)


def to_txt(rows: list[dict[str, Any]], clock: str = "wall") -> str:
    lines = []
    for row, (start, _) in zip(rows, _times(rows, clock)):
        if row["text"].strip():
            who = f"{row['speaker']}: " if row["speaker"] else ""
            lines.append(f"[{_timestamp(start, '.')[:-4]}] {who}{row['text']}")
    return "\n".join(lines) + ("\n" if lines else "")


def check(format: str, clock: str) -> None:
    """ValueError unless ``format`` and ``clock`` are ones :func:`render` takes."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if clock not in ("wall", "session"):
        raise ValueError("clock must be wall or session")


def render(rows: list[dict[str, Any]], format: str, clock: str = "wall") -> str:
    check(format, clock)
    return {"srt": to_srt, "vtt": to_vtt, "json": to_json, "txt": to_txt}[format](rows, clock)
