"""A room's transcript as SRT, WebVTT, JSON or plain text, from journal rows: each final at its
latest revision (an editor's correction, if any); JSON adds the room's post-edit rate, and on
request every correction.

Cue times are on the event's wall clock (each session's start plus its audio clock), counted
from the room's first caption, or on the session clock (``clock="session"``, for a recording
made of one session). Subtitle cues keep to 2 lines of at most 42 characters; a longer final is
split into several cues, its time shared out by length.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable
from typing import Any

from streaming.scoring import error_counts

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
    return re.sub(r"-+>", "->", " ".join(text.split()))


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


def to_json(rows: list[dict[str, Any]], clock: str = "wall", revisions: list[dict[str, Any]] | None = None, history: bool = False) -> str:
    """The finals (their latest revision), the room's post-edit rate, and with ``history`` each
    final's corrections (who, when, before, after)."""
    document: dict[str, Any] = {"finals": rows}
    if revisions is not None:
        document["post_edit"] = post_edit(rows, revisions)
        if history:
            by_seq: dict[int, list[dict[str, Any]]] = {}
            for revision in revisions:
                by_seq.setdefault(revision["seq"], []).append({k: v for k, v in revision.items() if k != "seq"})
            document["finals"] = [{**row, "revisions": by_seq.get(row["seq"], [])} for row in rows]
    return json.dumps(document, ensure_ascii=False, indent=1)


def post_edit(rows: list[dict[str, Any]], revisions: list[dict[str, Any]]) -> dict[str, Any]:
    """How much editors changed: per 100 words captioned (characters in Chinese and Japanese), the
    words that differ between each final as captioned and as it stands (word edit distance)."""
    captioned: dict[int, str] = {}
    for revision in revisions:
        captioned.setdefault(revision["seq"], revision["before_text"])  # the first correction's before: the machine's text
    by_language: dict[str, dict[str, int]] = {}
    for row in rows:
        language = row["language"]
        # Scored as the bench scores: the words changed from the text as captioned, and its length.
        edited, words = error_counts(captioned.get(row["seq"], row["text"]), row["text"], language)
        entry = by_language.setdefault(language, {"words": 0, "words_edited": 0})
        entry["words"] += words
        entry["words_edited"] += edited

    def rate(entry: dict[str, int]) -> float:
        return round(100 * entry["words_edited"] / entry["words"], 2) if entry["words"] else 0.0

    words, edited = sum(e["words"] for e in by_language.values()), sum(e["words_edited"] for e in by_language.values())
    return {
        "words": words, "words_edited": edited, "per_100_words": rate({"words": words, "words_edited": edited}),
        "corrections": len(revisions), "corrected_finals": len(captioned),
        "by_language": {language: {**entry, "per_100_words": rate(entry)} for language, entry in sorted(by_language.items())},
    }


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


def translated(rows: list[dict[str, Any]], translations: list[dict[str, Any]], lang: str) -> list[dict[str, Any]]:
    """The rows in ``lang``: ``original`` as they are (JSON carries each row's translations
    beside its text), or each final's translation in its place, timed as the final (a final
    with none yet is left out)."""
    by_seq: dict[int, dict[str, str]] = {}
    for translation in translations:
        by_seq.setdefault(translation["seq"], {})[translation["language"]] = translation["text"]
    if lang == "original":
        return [{**row, "translations": by_seq[row["seq"]]} if row["seq"] in by_seq else row for row in rows]
    return [{**row, "text": by_seq[row["seq"]][lang], "language": lang} for row in rows if lang in by_seq.get(row["seq"], {})]


def shadowed(rows: list[dict[str, Any]], shadows: list[dict[str, Any]], model: str | None = None) -> list[dict[str, Any]]:
    """The rows with what shadow models (serve --shadow) made of them: without ``model``, as they
    are (JSON carries each row's shadow texts beside its text, by model); with it, that model's
    text in place of each final's, timed as the final (a final it has no text for is left out)."""
    by_seq: dict[int, dict[str, str]] = {}
    for shadow in shadows:
        by_seq.setdefault(shadow["seq"], {})[shadow["model"]] = shadow["text"]
    if model is None:
        return [{**row, "shadows": by_seq[row["seq"]]} if row["seq"] in by_seq else row for row in rows]
    return [{**row, "text": by_seq[row["seq"]][model], "model": model} for row in rows if model in by_seq.get(row["seq"], {})]


def render(rows: list[dict[str, Any]], format: str, clock: str = "wall", revisions: list[dict[str, Any]] | None = None,
           history: bool = False) -> str:
    """The finals in ``format`` (each at its latest revision); JSON also carries the post-edit
    rate from ``revisions`` and, with ``history``, every final's corrections."""
    check(format, clock)
    if format == "json":
        return to_json(rows, clock, revisions, history)
    return {"srt": to_srt, "vtt": to_vtt, "txt": to_txt}[format](rows, clock)
