"""Deepgram's live streaming API (``/v1/listen``), spoken over FlashCaption's sessions.

A client written for Deepgram switches by changing the URL and the key: any Deepgram model
name (``nova-3``...) gets this server's model, its query parameters are read as Deepgram
documents them, and it is answered with ``Results``, ``SpeechStarted``, ``UtteranceEnd`` and
``Metadata`` messages. Each field's fate (supported, mapped, ignored or refused) is listed in
docs/compat.md; this module is the code of that table. No sockets here.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from decoder.context import Context, ContextError, parse_context
from streaming.compat.wire import HandshakeError, read_event, spread_words
from streaming.events import Caption, Final, Ready
from streaming.protocol import (
    MAX_RATE,
    MAX_TEXT_MESSAGE_BYTES,
    MIN_RATE,
    ClientMessage,
    ConfigMessage,
    EndMessage,
    FlushMessage,
    ProtocolError,
    PublishParams,
    parse_publish,
)

PATH = "/v1/listen"
# Model names Deepgram serves (and ours): each gets this server's model.
_MODEL = re.compile(r"(nova|base|enhanced|whisper|general|phonecall|meeting|conversationalai|video|voicemail|finance)([-.][A-Za-z0-9.-]{1,40})?")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}")
# Accepted and ignored, with why (docs/compat.md): harmless to a client that asked for them.
IGNORED = {
    "punctuate": "captions are always punctuated",
    "smart_format": "numbers are written as the server's --numbers says",
    "numerals": "numbers are written as the server's --numbers says",
    "endpointing": "utterances end after the server's --end-silence",
    "tag": "usage tags are not kept",
    "mip_opt_out": "nothing is kept for training",
    "version": "there is one version of the server's model",
    "extra": "extra metadata is not echoed",
    "filler_words": "the model writes what it writes",
    "language_hint": "the model detects the language itself (language=multi)",
}
# Refused when asked for, with what to do instead: silently wrong output would be worse.
REFUSED = {
    "diarize": "speaker diarization is not supported: publish each speaker as their own stream (speaker=...)",
    "diarize_model": "speaker diarization is not supported: publish each speaker as their own stream (speaker=...)",
    "multichannel": "one channel per stream: publish each channel as its own stream",
    "callback": "callbacks are not supported: read the results from this WebSocket",
    "callback_method": "callbacks are not supported: read the results from this WebSocket",
    "redact": "redaction is not supported",
    "search": "search is not supported",
    "replace": "term replacement is not supported",
    "detect_entities": "entity detection is not supported",
    "profanity_filter": "the profanity filter is not supported",
    "dictation": "dictation commands are not supported",
}
_OWN = {"room", "speaker", "token"}  # FlashCaption's own: the room to caption into, the speaker's name
_MAPPED = {"encoding", "sample_rate", "channels", "language", "model", "interim_results", "vad_events", "utterance_end_ms", "keyterm", "keywords"}
MAX_TERMS = 100


class DeepgramError(HandshakeError):
    """A request Deepgram would refuse, as Deepgram refuses it."""

    def body(self, request_id: str) -> str:
        code = "INVALID_AUTH" if self.status == 401 else "Bad Request"
        return json.dumps({"err_code": code, "err_msg": self.message, "request_id": request_id})


@dataclass(frozen=True)
class ListenParams:
    publish: PublishParams
    model: str  # as the client named it
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None
    ignored: tuple[str, ...] = ()  # parameters accepted and ignored, for the log


def subprotocol_key(offered: list[str]) -> str | None:
    """The key a browser client sends as WebSocket subprotocols (browsers cannot set headers):
    ``Sec-WebSocket-Protocol: token, KEY`` (``bearer, KEY`` for a temporary token)."""
    if len(offered) == 2 and offered[0].lower() in ("token", "bearer") and offered[1]:
        return offered[1]
    return None


def connection_room(connection_id: uuid.UUID) -> str:
    """The room of a connection that names none: its own, named after the connection (logged with the session)."""
    return f"listen-{connection_id.hex[:12]}"


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise DeepgramError(f"{name} must be true or false, not {value[:40]!r}")


def parse_listen(path: str, default_room: str) -> ListenParams:
    """The query of a ``/v1/listen`` request as a session's parameters (raises DeepgramError)."""
    try:
        pairs = parse_qsl(urlsplit(path).query, keep_blank_values=True, max_num_fields=4 * MAX_TERMS)
    except ValueError:
        raise DeepgramError("too many query parameters") from None
    single: dict[str, str] = {}
    terms: list[str] = []
    ignored = []
    for name, value in pairs:
        if name in ("keyterm", "keywords"):
            # keywords are "term:intensifier"; the intensifier is Deepgram's own scale, not ours.
            text = value.rsplit(":", 1)[0] if name == "keywords" and re.fullmatch(r".+:-?\d+(\.\d+)?", value) else value
            if text.strip():
                terms.append(text.strip())
            continue
        if name in REFUSED:
            if value.lower() in ("false", "0", ""):
                continue  # asked not to: nothing to refuse
            raise DeepgramError(f"{name}: {REFUSED[name]}")
        if name in IGNORED:
            ignored.append(name)
            continue
        if name not in _MAPPED and name not in _OWN:
            raise DeepgramError(f"unknown query parameter {name[:40]!r} (docs/compat.md lists what /v1/listen takes)")
        single[name] = value
    encoding = single.get("encoding")
    if encoding != "linear16":
        raise DeepgramError(
            f"encoding {encoding!r} is not supported: send raw 16-bit PCM with encoding=linear16&sample_rate=N"
            if encoding else "send raw 16-bit PCM and say so: encoding=linear16&sample_rate=N (containers are not read)"
        )
    try:
        rate = int(single.get("sample_rate", ""))
    except ValueError:
        raise DeepgramError("sample_rate is required with encoding=linear16, in whole Hz") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise DeepgramError(f"sample_rate must be {MIN_RATE}-{MAX_RATE} Hz, not {rate}")
    if single.get("channels", "1") != "1":
        raise DeepgramError("channels must be 1: publish each channel as its own stream")
    model = single.get("model", "nova-3")
    if not _MODEL.fullmatch(model):
        raise DeepgramError(f"model {model[:40]!r} is not a Deepgram model name (any of them, nova-3 for one, is served by this server's model)")
    language = single.get("language", "en")
    if language == "multi":
        language = "auto"
    elif _LANGUAGE.fullmatch(language):
        language = language.split("-")[0].lower()
    else:
        raise DeepgramError(f"language must be a BCP-47 tag such as en or en-US, or multi, not {language[:40]!r}")
    utterance_end = single.get("utterance_end_ms")
    utterance_end_ms = None
    if utterance_end is not None:
        if not re.fullmatch(r"[0-9]{1,5}", utterance_end) or not 1000 <= int(utterance_end) <= 5000:
            raise DeepgramError("utterance_end_ms must be a whole number of milliseconds, 1000-5000")
        utterance_end_ms = int(utterance_end)
    interim = _flag("interim_results", single.get("interim_results", "false"))
    if utterance_end_ms is not None and not interim:
        raise DeepgramError("utterance_end_ms needs interim_results=true")
    context = None
    if terms:
        if len(terms) > MAX_TERMS:
            raise DeepgramError(f"at most {MAX_TERMS} keyterms")
        try:
            context = parse_context({"terms": terms})
        except ContextError as error:
            raise DeepgramError(f"keyterm: {error}") from None
    # The rest as a native publisher's query, checked by the same rules. Deepgram takes audio as
    # fast as it comes (a file streamed in a loop, say): it is read as a recording, with
    # back-pressure, rather than refused for running ahead of real time.
    own = {name: single[name] for name in _OWN if name in single}
    native = {"room": default_room, **own, "language": language, "sample_rate": str(rate), "encoding": "pcm_s16le", "mode": "file"}
    try:
        publish = replace(parse_publish(native), context=context)
    except ProtocolError as error:
        raise DeepgramError(error.message) from None
    return ListenParams(publish, model, interim, _flag("vad_events", single.get("vad_events", "false")), utterance_end_ms, tuple(ignored))


@dataclass
class DeepgramDialect:
    """One ``/v1/listen`` connection: its parameters and what it has been sent."""

    resumable: ClassVar[bool] = False  # their clients cannot resume a session (Dialect.resumable)

    params: ListenParams
    model_name: str  # the server's
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _started: set[int] = field(default_factory=set)  # segments a SpeechStarted was sent for
    _finalizing: bool = False  # a Finalize came: the next final is its answer
    # A Configure came and is not yet answered (a refusal of it is answered by error()).
    _configuring: bool = False
    _keyterms: list[str] | None = None  # what it replaced the keyterms with (None: kept them)
    _configure_failure: str = "CONFIGURE_INTERNAL_ERROR"  # the code of its refusal, if refused

    def ready(self, ready: Ready) -> list[str]:
        return []  # Deepgram says nothing until it has something

    def client_message(self, text: str) -> ClientMessage | None:
        kind, message = read_event(text, MAX_TEXT_MESSAGE_BYTES)
        if kind == "KeepAlive":
            return None
        if kind == "Finalize":
            self._finalizing = True
            return FlushMessage()
        if kind == "CloseStream":
            return EndMessage()
        if kind == "Configure":
            self._configuring, self._keyterms = True, None  # a refusal below is answered as ConfigureFailure (error())
            self._configure_failure = "CONFIGURE_INTERNAL_ERROR"
            return self._configure(message)
        raise ProtocolError("bad_request", f"unknown message type {str(kind)[:40]!r} (expected KeepAlive, Finalize, CloseStream or Configure)")

    def _configure(self, message: dict[str, Any]) -> ConfigMessage:
        """Keyterms replaced mid-stream (the whole list; [] clears it; absent or null keeps it);
        ``features`` (formatting switches) are taken and ignored, as their query parameters are."""
        keyterms, features = message.get("keyterms"), message.get("features")
        if features is not None and (not isinstance(features, dict) or not all(isinstance(v, bool) for v in features.values())):
            raise ProtocolError("bad_request", "features must be an object of true or false")
        if keyterms is None:
            return ConfigMessage()
        if not isinstance(keyterms, list) or not all(isinstance(t, str) for t in keyterms):
            raise ProtocolError("bad_request", "keyterms must be a list of strings")
        terms = [t.strip() for t in keyterms if t.strip()]
        # Refused as a bad request, not as too large: that would end the stream, which Deepgram
        # does not do for a Configure over its limit.
        if len(terms) > MAX_TERMS:
            self._configure_failure = "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"
            raise ProtocolError("bad_request", f"at most {MAX_TERMS} keyterms")
        try:
            context = parse_context({"terms": terms}) if terms else Context()
        except ContextError as error:
            if error.too_large:
                self._configure_failure = "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"
            raise ProtocolError("bad_request", f"keyterms: {error}") from None
        self._keyterms = terms
        return ConfigMessage(context=context)

    def answers(self, applied: bool = True) -> list[str]:
        """A Configure is answered once applied; refused, by :meth:`error`, which follows."""
        if not self._configuring or not applied:
            return []
        terms, self._configuring = self._keyterms, False
        answer: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.request_id}
        if terms is not None:
            answer["keyterms"] = terms
        return [_json(answer)]

    def caption(self, message: Caption) -> list[str]:
        final = isinstance(message, Final)
        out = []
        if message.segment not in self._started:
            if not final:
                self._finalizing = False  # a new utterance: a Finalize before it had nothing to finalise
            if self.params.vad_events:
                out.append(_json({"type": "SpeechStarted", "channel": [0], "timestamp": message.start}))
        self._started.add(message.segment)
        if not final and not self.params.interim_results:
            return out
        from_finalize = final and self._finalizing
        if final:
            self._finalizing = False
            self._started.discard(message.segment)
        out.append(_json({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(message.end - message.start, 3),
            "start": message.start,
            "is_final": final,
            "speech_final": final and not from_finalize,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": message.text,
                "confidence": 1.0,
                "words": spread_words(message.text, message.start, message.end),
                "languages": [message.language],
            }]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": self.params.model, "version": self.model_name, "arch": self.model_name},
                "model_uuid": self.model_name,
            },
        }))
        if final and self.params.utterance_end_ms is not None:
            out.append(_json({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": message.end}))
        return out

    def error(self, error: ProtocolError) -> str:
        if self._configuring:
            self._configuring = False
            return _json({"type": "ConfigureFailure", "request_id": self.request_id, "code": self._configure_failure,
                          "description": error.message})
        return _json({"type": "Error", "variant": error.code, "description": error.message})

    def closing(self, audio_seconds: float) -> list[str]:
        return [_json({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "",
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(audio_seconds, 3),
            "channels": 1,
            "models": [self.model_name],
            "model_info": {self.model_name: {"name": self.params.model, "version": self.model_name, "arch": self.model_name}},
        })]


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))
