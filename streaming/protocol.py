"""Wire protocol v1, client to server: query parameters and control messages.

Parsing returns small typed records or raises :class:`ProtocolError`, whose ``code`` is one of
the protocol's error codes. What the server sends is :mod:`streaming.events`'. See
docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from decoder.context import Context, ContextError, parse_context

VERSION = 1
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4}  # bytes per sample
MIN_RATE, MAX_RATE = 8000, 48000
MAX_TEXT_MESSAGE_BYTES = 64 * 1024
MAX_SPEAKER = 64  # characters
MAX_SEQ = 2**63 - 1  # seq numbers are SQLite integers
_ROOM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LANGUAGE = re.compile(r"auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")

# Error codes and the WebSocket close code each one ends with (when it ends the connection).
CLOSE_CODES = {
    "bad_request": 1008,
    "unauthorized": 1008,
    "too_large": 1009,
    "overloaded": 1013,
    "internal": 1011,
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, retry_url: str | None = None):
        """``retry_url``: for ``overloaded``, another node sharing this one's store that has room."""
        assert code in CLOSE_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_url = retry_url

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]


@dataclass(frozen=True)
class PublishParams:
    room: str = "default"
    speaker: str = ""
    language: str | None = None
    languages: tuple[str, ...] = ()  # with language auto: the candidates to detect among
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    context: Context | None = None
    token: str | None = None
    resume: str | None = None  # a session id to continue after a dropped connection
    mode: str = "live"  # "file": audio may come faster than real time
    partials: bool = True  # False: finals only (a recording transcribed as a whole, not watched)
    translate: str | None = None  # "en": each final is also translated into English

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * ENCODINGS[self.encoding]


@dataclass(frozen=True)
class ViewParams:
    room: str = "default"
    since: int | None = None
    token: str | None = None
    editor: str = ""  # who corrections sent on this connection are by (a captioner's name)
    shadow: bool = False  # also the shadow model's text of each final (serve --shadow; the /compare page)


@dataclass(frozen=True)
class CorrectMessage:
    """A viewer with an ``edit`` token corrects a final: its new text and speaker (None: the
    speaker stays), made on revision ``base`` of it (a correction made on an older one is
    refused: someone else corrected it meanwhile)."""

    seq: int
    text: str
    speaker: str | None
    base: int


@dataclass(frozen=True)
class AddTermMessage:
    """An editor adds a term to the room's context (it biases later decoding)."""

    term: str


@dataclass(frozen=True)
class ConfigMessage:
    language: str | None = None
    context: Context | None = None


@dataclass(frozen=True)
class FlushMessage:
    pass


@dataclass(frozen=True)
class EndMessage:
    pass


@dataclass(frozen=True)
class AudioMessage:
    """Audio that came in a text message (a dialect that sends it base64-encoded, as OpenAI's
    realtime API does): read as a binary frame would be."""

    data: bytes


@dataclass(frozen=True)
class ClearMessage:
    """Drop the utterance in progress, uncaptioned (OpenAI's ``input_audio_buffer.clear``)."""


ClientMessage = ConfigMessage | FlushMessage | EndMessage | AudioMessage | ClearMessage


def split_path(path: str) -> tuple[str, dict[str, str]]:
    """Request path -> (route, query parameters); a repeated parameter is an error."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    repeated = [k for k, v in query.items() if len(v) > 1]
    if repeated:
        raise ProtocolError("bad_request", f"query parameter {repeated[0]!r} given more than once")
    return parts.path, {k: v[0] for k, v in query.items()}


def _room(value: str | None) -> str:
    room = "default" if value is None else value
    if not _ROOM.fullmatch(room):
        raise ProtocolError("bad_request", "room must be 1-64 characters of A-Z a-z 0-9 _ -")
    return room


def _language(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _language_code(value)


def _language_code(value: Any) -> str:
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        raise ProtocolError("bad_request", f"language must be 'auto' or a language code like 'en', not {value!r}")
    return value


def _context(value: Any) -> Context | None:
    """Free text or a term list (see decoder/context.py for the forms and limits)."""
    try:
        return parse_context(value)
    except ContextError as error:
        raise ProtocolError("too_large" if error.too_large else "bad_request", str(error)) from None


_PUBLISH_KEYS = {"room", "speaker", "language", "languages", "sample_rate", "encoding", "context", "token", "resume", "mode", "translate"}
_SESSION_ID = re.compile(r"[0-9a-f]{12}")
_VIEW_KEYS = {"room", "since", "token", "editor", "shadow"}
MAX_CORRECTION_TEXT = 2000  # characters of a corrected final


def _unknown(query: Mapping[str, str], known: set[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise ProtocolError("bad_request", f"unknown query parameter {unknown[0]!r}")


def parse_publish(query: Mapping[str, str]) -> PublishParams:
    _unknown(query, _PUBLISH_KEYS)
    try:
        rate = int(query.get("sample_rate", "16000"))
    except ValueError:
        raise ProtocolError("bad_request", "sample_rate must be a whole number of Hz") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError("bad_request", f"sample_rate must be {MIN_RATE}-{MAX_RATE} Hz, not {rate}")
    encoding = query.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError("bad_request", f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    speaker = _speaker(query.get("speaker", ""), "speaker")
    mode = query.get("mode", "live")
    if mode not in ("live", "file"):
        raise ProtocolError("bad_request", f"mode must be live or file, not {mode!r}")
    translate = query.get("translate")
    if translate is not None and not re.fullmatch(r"[a-z]{2,3}", translate):
        # Which targets the server can do is its room settings' to say (RoomSettings.translation).
        raise ProtocolError("bad_request", f"translate must be a language code such as en, not {translate[:20]!r}")
    resume = query.get("resume")
    if resume is not None and not _SESSION_ID.fullmatch(resume):
        raise ProtocolError("bad_request", "resume must be a session id from a ready message")
    return PublishParams(
        room=_room(query.get("room")),
        speaker=speaker,
        language=_language(query.get("language")),
        languages=tuple(_language_code(code.strip()) for code in query.get("languages", "").split(",") if code.strip()),
        sample_rate=rate,
        encoding=encoding,
        context=_context(query.get("context")),
        token=query.get("token"),
        resume=resume,
        mode=mode,
        translate=translate,
    )


def parse_view(query: Mapping[str, str]) -> ViewParams:
    _unknown(query, _VIEW_KEYS)
    since_text = query.get("since")
    since = None if since_text is None else _whole("since", since_text, 0, MAX_SEQ, "a seq")
    shadow = query.get("shadow", "0")
    if shadow not in ("0", "1"):
        raise ProtocolError("bad_request", "shadow must be 0 or 1 (1: also the shadow model's text of each final)")
    return ViewParams(room=_room(query.get("room")), since=since, token=query.get("token"), editor=_speaker(query.get("editor", ""), "editor"),
                      shadow=shadow == "1")


def parse_view_message(text: str) -> CorrectMessage | AddTermMessage:
    """A viewer's text message: a correction or a term for the room (docs/protocol.md), or ``bad_request``."""
    if len(text) > 4 * MAX_CORRECTION_TEXT + 1024:
        raise ProtocolError("bad_request", "a correction is at most a few kilobytes")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_request", "text message is not a JSON object") from None
    if isinstance(message, dict) and message.get("type") == "add_term":
        term = message.get("term")
        if not isinstance(term, str) or not term.strip() or not all(_printable(c) for c in term):
            raise ProtocolError("bad_request", "term must be printable text")
        return AddTermMessage(" ".join(term.split()))
    if not isinstance(message, dict) or message.get("type") != "correct":
        raise ProtocolError("bad_request", 'viewers send only corrections ({"type": "correct", "seq": N, "text": ..., "base": REVISION}) '
                                           'and terms ({"type": "add_term", "term": ...})')
    seq, base, new_text, speaker = message.get("seq"), message.get("base", 0), message.get("text"), message.get("speaker")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise ProtocolError("bad_request", "seq must be the seq of a final")
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base <= MAX_SEQ:
        raise ProtocolError("bad_request", "base must be the revision the correction was made on (0: the final as captioned)")
    if not isinstance(new_text, str) or len(new_text) > MAX_CORRECTION_TEXT or not all(_printable(c) for c in new_text):
        raise ProtocolError("bad_request", f"text must be at most {MAX_CORRECTION_TEXT} printable characters on one line")
    if speaker is not None and not isinstance(speaker, str):
        raise ProtocolError("bad_request", "speaker must be a string")
    return CorrectMessage(seq, " ".join(new_text.split()), None if speaker is None else _speaker(speaker, "speaker"), base)


def _whole(name: str, text: str, low: int, high: int, what: str) -> int:
    """A whole-number query parameter in [low, high], or a ``bad_request`` naming it."""
    try:
        value = int(text)
    except ValueError:
        raise ProtocolError("bad_request", f"{name} must be a whole number ({what})") from None
    if not low <= value <= high:
        raise ProtocolError("bad_request", f"{name} must be {low}-{high}, not {text[:20]}")
    return value


def _speaker(name: str, field: str) -> str:
    if len(name) > MAX_SPEAKER or not all(_printable(c) for c in name):
        raise ProtocolError(
            "bad_request", f"{field} must be at most {MAX_SPEAKER} printable characters (no control, format or line-separator characters)"
        )
    return name


def _printable(char: str) -> bool:
    """Letters, marks, numbers, punctuation, symbols and plain spaces: nothing that moves text
    about (bidirectional overrides), breaks lines, or controls a terminal."""
    return unicodedata.category(char)[0] in "LMNPS" or char == " "


def parse_client_message(text: str) -> ClientMessage:
    if len(text.encode("utf-8", errors="replace")) > MAX_TEXT_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"text messages are limited to {MAX_TEXT_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError("bad_request", f"text message is not valid JSON: {error.msg}") from None
    except RecursionError:  # "[[[[..." within 64 KiB is deeper than the parser goes
        raise ProtocolError("bad_request", "text message is nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts
        raise ProtocolError("bad_request", "text message holds a number too long to read") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_request", 'text message must be a JSON object with a "type"')
    kind = message["type"]
    if kind == "config":
        unknown = sorted(set(message) - {"type", "language", "context"})
        if unknown:
            raise ProtocolError("bad_request", f"unknown config field {unknown[0]!r}")
        return ConfigMessage(language=_language(message.get("language")), context=_context(message.get("context")))
    if kind == "flush":
        return FlushMessage()
    if kind == "end":
        return EndMessage()
    raise ProtocolError("bad_request", f"unknown message type {kind!r} (expected config, flush or end)")
