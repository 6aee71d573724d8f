"""OpenAI's file transcription API (``POST /v1/audio/transcriptions``), spoken over FlashCaption's
sessions.

The form's fields become a session's parameters (:func:`parse_form`); the recording is captioned
by a session of its own in a room (``room`` in the query, else one per request), so
overlays, the journal and ``/metrics`` see it like any other; the finals come back in the
response format asked for (:func:`render`), or, with ``stream=true``, as server-sent events, one
``transcript.text.delta`` per final (:func:`stream_delta`). Every field's fate is in
docs/compat.md. No sockets here.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from decoder.context import ContextError, parse_context
from streaming.compat.openai_realtime import LANGUAGE_CODE, MODEL_NAME, OpenAIError
from streaming.compat.wire import spread_words
from streaming.events import Caption, Final, Ready
from streaming.export import to_srt, to_vtt
from streaming.protocol import ClientMessage, ProtocolError, PublishParams, parse_client_message, parse_publish
from streaming.scoring import CHARACTER_LANGUAGES

PATH = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",  # as OpenAI answers them
    "vtt": "text/plain; charset=utf-8",
}
# Fields taken and used; fields taken and ignored (harmless: docs/compat.md says why).
_USED = {"file", "model", "language", "prompt", "response_format", "timestamp_granularities[]", "stream"}
_IGNORED = {"temperature", "chunking_strategy", "include[]"}
# verbose_json gives a language's name, as Whisper's API does.
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "ja": "japanese", "pt": "portuguese",
    "zh": "chinese", "nl": "dutch", "ru": "russian", "ko": "korean", "ar": "arabic", "hi": "hindi", "pl": "polish",
    "tr": "turkish", "uk": "ukrainian", "sv": "swedish", "yue": "cantonese",
}


@dataclass(frozen=True)
class FileRequest:
    """What a transcription request asks for (the audio apart)."""

    publish: PublishParams  # room, speaker, language, context; the audio's rate is the server's
    model: str
    response_format: str = "json"
    words: bool = False  # timestamp_granularities[] holds "word"
    stream: bool = False
    ignored: tuple[str, ...] = ()


def request_room() -> str:
    """The room of a request that names none: its own."""
    return f"transcription-{uuid.uuid4().hex[:12]}"


def parse_form(fields: Mapping[str, Sequence[str]], query: Mapping[str, str], default_room: str) -> FileRequest:
    """The form's text fields (every value of each; the file apart) and the URL's query: raises
    OpenAIError for what OpenAI's API would refuse, or what this server cannot do."""
    for name in fields:
        if name not in _USED | _IGNORED or name == "file":
            raise OpenAIError(f"Unrecognized request argument supplied: {name[:40]}")
    for name in query:
        if name not in ("room", "speaker", "token"):
            raise OpenAIError(f"unknown query parameter {name[:40]!r} (docs/compat.md lists what {PATH} takes)")

    def one(name: str) -> str | None:
        values = fields.get(name, ())
        if len(values) > 1:
            raise OpenAIError(f"{name} given more than once")
        return values[0] if values else None

    model = one("model")
    if not model:
        raise OpenAIError("you must provide a model parameter")
    if not MODEL_NAME.fullmatch(model):
        raise OpenAIError(f"model {model[:40]!r} is not an OpenAI transcription model name")
    response_format = one("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format[:40]!r}")
    granularities = set(fields.get("timestamp_granularities[]", ()))
    if granularities - {"word", "segment"}:
        raise OpenAIError("timestamp_granularities[] takes word and segment")
    if granularities and response_format != "verbose_json":
        raise OpenAIError("timestamp_granularities[] is only supported with response_format verbose_json")
    stream_value = (one("stream") or "false").lower()
    if stream_value not in ("true", "false"):
        raise OpenAIError("stream must be true or false")
    stream = stream_value == "true"
    if stream and response_format not in ("json", "text"):
        raise OpenAIError("stream=true takes response_format json or text")
    temperature = one("temperature")
    if temperature is not None:
        try:
            if not 0.0 <= float(temperature) <= 1.0:
                raise ValueError
        except ValueError:
            raise OpenAIError("temperature must be a number from 0 to 1") from None
    native: dict[str, str] = {"room": default_room, "mode": "file"}
    for name in ("room", "speaker"):  # in the query, so that a token is checked before the body is read
        if name in query:
            native[name] = query[name]
    language = one("language")
    if language:
        if not LANGUAGE_CODE.fullmatch(language):
            raise OpenAIError("language must be an ISO-639-1 code such as en")
        native["language"] = language.split("-")[0].lower()
    try:
        publish = parse_publish(native)
        prompt = one("prompt")
        if prompt and prompt.strip():
            publish = replace(publish, context=parse_context(prompt))
    except ContextError as error:
        raise OpenAIError(f"prompt: {error}", 413 if error.too_large else 400) from None
    except ProtocolError as error:
        raise OpenAIError(error.message) from None
    ignored = tuple(sorted(name for name in fields if name in _IGNORED))
    # A recording is captioned for its finals: partials would cost decodes nobody sees.
    return FileRequest(replace(publish, partials=False), model, response_format, "word" in granularities, stream, ignored)


@dataclass
class FileDialect:
    """The session of one transcription request: its finals are kept (and, streaming, handed to
    ``on_final`` as they come); nothing is sent on a socket, there is none."""

    resumable: ClassVar[bool] = False

    request: FileRequest
    finals: list[Final] = field(default_factory=list)
    language: str = "en"
    on_final: Any = None  # Callable[[Final], None]

    def ready(self, ready: Ready) -> list[str]:
        self.language = ready.language
        return []

    def client_message(self, text: str) -> ClientMessage | None:
        return parse_client_message(text)  # only the server's own feed writes to this session

    def answers(self, applied: bool = True) -> list[str]:
        return []

    def caption(self, message: Caption) -> list[str]:
        if isinstance(message, Final) and message.text.strip():
            self.finals.append(message)
            if self.on_final is not None:
                self.on_final(message)
        return []

    def error(self, error: ProtocolError) -> str:
        return ""

    def closing(self, audio_seconds: float) -> list[str]:
        return []


def _joined(texts: Sequence[str], language: str) -> str:
    separator = "" if language in CHARACTER_LANGUAGES else " "
    return separator.join(t.strip() for t in texts if t.strip())


def _language(finals: Sequence[Final], asked: str) -> str:
    if asked != "auto":
        return asked
    counts: dict[str, int] = {}
    for final in finals:
        counts[final.language] = counts.get(final.language, 0) + len(final.text)
    return max(counts, key=lambda code: counts[code]) if counts else "en"


def render(request: FileRequest, finals: Sequence[Final], asked_language: str, duration: float) -> tuple[str, str]:
    """The response body and its content type."""
    language = _language(finals, asked_language)
    text = _joined([f.text for f in finals], language)
    usage = {"type": "duration", "seconds": round(duration, 3)}
    form = request.response_format
    if form == "text":
        body = text + "\n"
    elif form in ("srt", "vtt"):
        rows = [{"text": f.text, "speaker": f.speaker, "start": f.start, "end": f.end} for f in finals]
        body = (to_srt if form == "srt" else to_vtt)(rows, clock="session")
    elif form == "json":
        body = json.dumps({"text": text, "usage": usage}, ensure_ascii=False)
    else:
        verbose: dict[str, Any] = {
            "task": "transcribe", "language": LANGUAGE_NAMES.get(language, language), "duration": round(duration, 3), "text": text,
            "segments": [_segment(number, final) for number, final in enumerate(finals)], "usage": usage,
        }
        if request.words:
            verbose["words"] = [{"word": w["punctuated_word"], "start": w["start"], "end": w["end"]}
                                for f in finals for w in spread_words(f.text, f.start, f.end)]
        body = json.dumps(verbose, ensure_ascii=False)
    return body, CONTENT_TYPES[form]


def _segment(number: int, final: Final) -> dict[str, Any]:
    # The official client types Whisper's per-segment figures as numbers: the compression ratio
    # is computed as Whisper does; the log-probability and no-speech probability are not what
    # these models give, so 0.0 (the server's voice detector took it for speech), said so in
    # docs/compat.md.
    text = " " + final.text.strip()
    data = text.encode("utf-8")
    return {
        "id": number, "seek": int(final.start * 100), "start": final.start, "end": final.end, "text": text,
        "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": round(len(data) / len(zlib.compress(data)), 3),
        "no_speech_prob": 0.0, "seq": final.seq,
    }


def stream_delta(final: Final, first: bool) -> bytes:
    """A streamed transcription's event for one final: the text it adds."""
    text = final.text.strip()
    return _sse({"type": "transcript.text.delta", "delta": text if first or final.language in CHARACTER_LANGUAGES else " " + text})


def stream_done(finals: Sequence[Final], asked_language: str) -> bytes:
    """A streamed transcription's last event: the whole text."""
    text = _joined([f.text for f in finals], _language(finals, asked_language))
    # No usage: the client reads this event's usage as tokens, which there are none of.
    return _sse({"type": "transcript.text.done", "text": text})


def stream_error(message: str) -> bytes:
    """A streamed transcription that failed after its 200 went out ends with this event."""
    return _sse({"type": "error", "error": {"message": message, "type": "invalid_request_error"}})


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"
