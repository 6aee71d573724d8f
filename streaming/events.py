"""What the server sends: typed events, and the one place that turns them into JSON.

Parsing what clients send is :mod:`streaming.protocol`'s; a session's own caption events
(:class:`streaming.session.PartialCaption`, :class:`~streaming.session.FinalCaption`) become
:class:`Partial` and :class:`Final` here, with the room, session and speaker they belong to.
A new event is a dataclass here plus its field names in :func:`to_wire`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streaming.session import FinalCaption, PartialCaption


@dataclass(frozen=True)
class Ready:
    """The first message of every connection: who it is and what it is served with."""

    session: str
    room: str
    model: str
    language: str
    sample_rate: int | None = None  # publishers: the rate their audio is read at
    seq: int | None = None  # viewers: the room's last seq when they joined
    mapped_from: str | None = None  # publishers: the language asked for, when the model captions it as ``language``


@dataclass(frozen=True)
class Partial:
    room: str
    session: str
    speaker: str
    segment: int
    text: str
    stable: int  # leading characters of ``text`` that later partials keep
    start: float
    end: float
    language: str


@dataclass(frozen=True)
class Final:
    room: str
    session: str
    speaker: str
    segment: int
    text: str
    start: float
    end: float
    language: str
    seq: int | None = None  # given by the room when it is journaled
    wall_start: float | None = None  # Unix time of ``start``
    revision: int = 0  # how often an editor has corrected it (0: as captioned)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Final:
        """A journal row (see :mod:`streaming.journal`) as the final it is now (its latest revision)."""
        return cls(
            room=row["room"], session=row["session"], speaker=row["speaker"], segment=row["segment"], text=row["text"],
            start=row["start"], end=row["end"], language=row["language"], seq=row["seq"],
            wall_start=round(row["wall_start"], 3), revision=row.get("revision", 0),
        )


@dataclass(frozen=True)
class Correction:
    """An editor's new text (and speaker) for a final, revision ``revision`` of it."""

    room: str
    seq: int
    text: str
    speaker: str
    revision: int
    editor: str
    at: float  # Unix time it was made

    @classmethod
    def from_row(cls, room: str, row: Mapping[str, Any]) -> Correction:
        return cls(room, row["seq"], row["text"], row["speaker"], row["revision"], row["editor"], round(row["at"], 3))


@dataclass(frozen=True)
class CorrectionRefused:
    """A correction the server did not make, told to the editor who sent it."""

    seq: int | None  # None: the message was not a correction one could read
    code: str
    message: str
    revision: int | None = None  # the final's revision now, when it was corrected meanwhile


@dataclass(frozen=True)
class ErrorEvent:
    code: str  # one of streaming.protocol.CLOSE_CODES
    message: str
    retry_url: str | None = None  # overloaded: a node sharing this one's store that has room (connect there instead)


@dataclass(frozen=True)
class Translation:
    """A final's text in another language (``language``), sent after the final itself."""

    room: str
    seq: int
    language: str
    text: str


@dataclass(frozen=True)
class ShadowFinal:
    """What the room's shadow model (``serve --shadow``) made of a final's audio, sent after the
    final to viewers that asked for it (``shadow=1``: the /compare page)."""

    room: str
    seq: int
    model: str
    language: str
    text: str


@dataclass(frozen=True)
class RoomTerms:
    """For editors: the terms added to the room's context, and terms their corrections suggest."""

    room: str
    terms: tuple[str, ...]
    suggested: tuple[str, ...]


Event = Ready | Partial | Final | ErrorEvent | Correction | CorrectionRefused | RoomTerms | Translation | ShadowFinal
Caption = Partial | Final


def caption(event: PartialCaption | FinalCaption, room: str, session: str, speaker: str) -> Caption:
    """A session's caption event as the room and its viewers see it (times to the millisecond)."""
    start, end = round(event.start, 3), round(event.end, 3)
    if isinstance(event, PartialCaption):
        return Partial(room, session, speaker, event.segment, event.text, event.stable, start, end, event.language)
    return Final(room, session, speaker, event.segment, event.text, start, end, event.language)


def to_wire(event: Event) -> dict[str, Any]:
    """The event as protocol v1's JSON object (docs/protocol.md); fields left None are omitted."""
    if isinstance(event, Ready):
        message: dict[str, Any] = {
            "type": "ready", "session": event.session, "room": event.room, "model": event.model, "language": event.language,
        }
        if event.sample_rate is not None:
            message["sample_rate"] = event.sample_rate
        if event.seq is not None:
            message["seq"] = event.seq
        if event.mapped_from is not None:
            message["mapped_from"] = event.mapped_from
        return message
    if isinstance(event, ErrorEvent):
        return {"type": "error", "code": event.code, "message": event.message, **({"retry_url": event.retry_url} if event.retry_url else {})}
    if isinstance(event, Correction):
        return {"type": "correction", "room": event.room, "seq": event.seq, "text": event.text, "speaker": event.speaker,
                "revision": event.revision, "editor": event.editor, "at": event.at}
    if isinstance(event, Translation):
        return {"type": "translation", "room": event.room, "seq": event.seq, "language": event.language, "text": event.text}
    if isinstance(event, ShadowFinal):
        return {"type": "shadow", "room": event.room, "seq": event.seq, "model": event.model, "language": event.language, "text": event.text}
    if isinstance(event, RoomTerms):
        return {"type": "terms", "room": event.room, "terms": list(event.terms), "suggested": list(event.suggested)}
    if isinstance(event, CorrectionRefused):
        refused: dict[str, Any] = {"type": "correction_refused", "seq": event.seq, "code": event.code, "message": event.message}
        if event.revision is not None:
            refused["revision"] = event.revision
        return refused
    message = {
        "type": "partial" if isinstance(event, Partial) else "final",
        "room": event.room,
        "session": event.session,
        "speaker": event.speaker,
        "segment": event.segment,
        "text": event.text,
    }
    if isinstance(event, Partial):
        message["stable"] = event.stable
    message.update(start=event.start, end=event.end, language=event.language)
    if isinstance(event, Final):
        if event.seq is not None:
            message["seq"] = event.seq
        if event.wall_start is not None:
            message["wall_start"] = event.wall_start
        if event.revision:
            message["revision"] = event.revision
    return message


def decode(text: str) -> Event:
    """An event :func:`encode` made, back (what another node's rooms sent); ValueError if it is not one."""
    try:
        message = json.loads(text)
        kind = message.pop("type")
        if kind == "partial":
            return Partial(**message)
        if kind == "final":
            return Final(**message)
        if kind == "correction":
            return Correction(**message)
        if kind == "translation":
            return Translation(**message)
        if kind == "shadow":
            return ShadowFinal(**message)
        if kind == "terms":
            return RoomTerms(message["room"], tuple(message["terms"]), tuple(message["suggested"]))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"not an event: {error}") from None
    raise ValueError(f"not a live event: {kind}")


def encode(event: Event) -> str:
    """The event as one compact JSON text message."""
    return json.dumps(to_wire(event), ensure_ascii=False, separators=(",", ":"))
