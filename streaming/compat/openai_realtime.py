"""OpenAI's realtime transcription API (``/v1/realtime?intent=transcription``), spoken over
FlashCaption's sessions.

Both shapes of the session's configuration are read: the current ``session.update`` with a
``transcription`` session (``audio.input.format``, ``audio.input.transcription``,
``audio.input.turn_detection``) and the older beta ``transcription_session.update``
(``input_audio_format``, ``input_audio_transcription``, ``turn_detection``); each is answered in
its own shape. Audio is base64 PCM16 at 24 kHz in ``input_audio_buffer.append``. Each utterance
is one conversation item: ``speech_started`` with its first words, the growth of its stable text
as ``delta`` events while it is spoken, then ``speech_stopped``, ``committed`` and ``completed``
with the final's text. Every field's fate is in docs/compat.md. No sockets here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from decoder.context import Context, ContextError, parse_context
from streaming.compat.wire import HandshakeError, read_event
from streaming.events import Caption, Final, Ready
from streaming.protocol import AudioMessage, ClearMessage, ClientMessage, ConfigMessage, FlushMessage, ProtocolError, PublishParams, parse_publish

PATH = "/v1/realtime"
RATE = 24000  # the only rate the API takes
# One message holds at most 1 s of audio (as on /v1/publish): base64 of 48,000 bytes and the JSON around it.
MAX_TEXT_MESSAGE_BYTES = 72 * 1024
# OpenAI's transcription model names (each is served by this server's model), and language codes
# as its APIs take them; shared with the file API (openai_files.py).
MODEL_NAME = re.compile(r"(whisper-1|gpt-[A-Za-z0-9.-]{1,60}|[a-z0-9.-]{1,60}transcribe[a-z0-9.-]{0,40})")
LANGUAGE_CODE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?")
_OWN = {"room", "speaker", "token"}


class OpenAIError(HandshakeError):
    """A request OpenAI's API would refuse, as it refuses it."""

    def body(self, request_id: str) -> str:
        kind = "invalid_api_key" if self.status == 401 else "invalid_request_error"
        return json.dumps({"error": {"message": self.message, "type": kind, "code": kind, "param": None}, "request_id": request_id})


@dataclass(frozen=True)
class RealtimeParams:
    publish: PublishParams
    model: str | None  # as the connection URL named it


def connection_room(connection_id: uuid.UUID) -> str:
    """The room of a connection that names none: its own, named after the connection."""
    return f"realtime-{connection_id.hex[:12]}"


def parse_realtime(path: str, default_room: str) -> RealtimeParams:
    """The query of a ``/v1/realtime`` request (raises OpenAIError)."""
    try:
        pairs = parse_qsl(urlsplit(path).query, keep_blank_values=True, max_num_fields=16)
    except ValueError:
        raise OpenAIError("too many query parameters") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise OpenAIError(f"query parameter {name!r} given more than once")
        if name not in _OWN | {"intent", "model"}:
            raise OpenAIError(f"unknown query parameter {name[:40]!r} (docs/compat.md lists what /v1/realtime takes)")
        query[name] = value
    if query.get("intent") != "transcription":
        raise OpenAIError("only transcription sessions are served here: connect with intent=transcription")
    model = query.get("model")
    if model is not None and not MODEL_NAME.fullmatch(model):
        raise OpenAIError(f"model {model[:40]!r} is not an OpenAI transcription model name")
    native = {"room": default_room, **{k: query[k] for k in _OWN if k in query}, "sample_rate": str(RATE), "encoding": "pcm_s16le", "mode": "file"}
    try:
        return RealtimeParams(parse_publish(native), model)
    except ProtocolError as error:
        raise OpenAIError(error.message) from None


@dataclass
class _Item:
    id: str
    sent: str = ""  # the text already sent as deltas


@dataclass
class RealtimeDialect:
    """One ``/v1/realtime`` transcription connection."""

    resumable: ClassVar[bool] = False  # their clients cannot resume a session (Dialect.resumable)

    params: RealtimeParams
    model_name: str  # the server's
    language: str | None = None
    prompt: str = ""
    transcription_model: str = "gpt-4o-transcribe"
    _update_asked: tuple[bool, str | None, str, str] | None = None  # beta shape, language, prompt, model
    _items: dict[int, _Item] = field(default_factory=dict)  # by segment
    _previous: str | None = None  # the last committed item
    _cleared: bool = False  # the last message was input_audio_buffer.clear
    _dropped: set[int] = field(default_factory=set)  # segments of items cleared

    def ready(self, ready: Ready) -> list[str]:
        self.language = ready.language if ready.language != "auto" else None
        return [self._event("session.created", session=self._session())]

    def answers(self, applied: bool = True) -> list[str]:
        """The reply to a session update, once the server has ``applied`` it (if it refused it,
        the session stays as it was and the refusal is the reply)."""
        if self._cleared:
            self._cleared = False
            if not applied:
                return []
            # The items begun are dropped with their audio: what the session still says of them
            # (an empty final, withdrawing a partial) is not passed on.
            self._dropped.update(self._items)
            self._items.clear()
            return [self._event("input_audio_buffer.cleared")]
        asked, self._update_asked = self._update_asked, None
        if asked is None or not applied:
            return []
        beta, self.language, self.prompt, self.transcription_model = asked
        return [self._event("transcription_session.updated" if beta else "session.updated", session=self._session(beta))]

    def client_message(self, text: str) -> ClientMessage | None:
        kind, message = read_event(text, MAX_TEXT_MESSAGE_BYTES)
        if kind == "input_audio_buffer.append":
            try:
                return AudioMessage(base64.b64decode(str(message.get("audio", "")), validate=True))
            except (binascii.Error, ValueError):
                raise ProtocolError("bad_request", "input_audio_buffer.append: audio must be base64") from None
        if kind == "input_audio_buffer.commit":
            return FlushMessage()
        if kind == "input_audio_buffer.clear":
            self._cleared = True
            return ClearMessage()
        if kind in ("session.update", "transcription_session.update"):
            return self._update(message.get("session"), beta=kind == "transcription_session.update")
        raise ProtocolError("bad_request", f"unsupported event type {str(kind)[:60]!r} (a transcription session takes "
                                           "session.update, input_audio_buffer.append and input_audio_buffer.commit)")

    def _update(self, session: Any, beta: bool) -> ConfigMessage:
        if not isinstance(session, dict):
            raise ProtocolError("bad_request", "session must be an object")
        if beta:
            audio_format = session.get("input_audio_format")
            transcription = session.get("input_audio_transcription")
            turn = session.get("turn_detection", {"type": "server_vad"})
            if audio_format not in (None, "pcm16"):
                raise ProtocolError("bad_request", f"input_audio_format {str(audio_format)[:40]!r} is not supported: send pcm16 (24 kHz)")
        else:
            if session.get("type", "transcription") != "transcription":
                raise ProtocolError("bad_request", "only transcription sessions are served here (session.type transcription)")
            audio = _object(session.get("audio"), "audio")
            audio_in = _object(audio.get("input"), "audio.input")
            audio_format = audio_in.get("format")
            if audio_format is not None and (not isinstance(audio_format, dict) or audio_format.get("type") != "audio/pcm"
                                             or audio_format.get("rate", RATE) != RATE):
                raise ProtocolError("bad_request", "audio.input.format must be audio/pcm at 24000 Hz")
            transcription = audio_in.get("transcription")
            turn = audio_in.get("turn_detection", {"type": "server_vad"})
        # null (turns by commit alone) is taken: the server still ends utterances at pauses, and
        # a commit ends the one in progress at once, so a client that commits gets every word.
        if turn is not None and (not isinstance(turn, dict) or turn.get("type") not in ("server_vad", "semantic_vad")):
            raise ProtocolError("bad_request", "turn_detection must be server_vad, semantic_vad or null")
        language, context = None, None
        model, prompt, shown_language = self.transcription_model, self.prompt, self.language
        if transcription is not None:
            if not isinstance(transcription, dict):
                raise ProtocolError("bad_request", "transcription must be an object")
            asked_model = transcription.get("model")
            if asked_model is not None:
                if not isinstance(asked_model, str) or not MODEL_NAME.fullmatch(asked_model):
                    raise ProtocolError("bad_request", f"model {str(asked_model)[:40]!r} is not an OpenAI transcription model name")
                model = asked_model
            asked = transcription.get("language")
            if asked is not None:
                if not isinstance(asked, str) or not LANGUAGE_CODE.fullmatch(asked):
                    raise ProtocolError("bad_request", "language must be an ISO-639-1 code such as en")
                language = shown_language = asked.split("-")[0].lower()
            asked_prompt = transcription.get("prompt")
            if asked_prompt is not None:
                try:
                    # An empty prompt clears it (None would leave the session's as it was).
                    context = parse_context(str(asked_prompt)) if str(asked_prompt).strip() else Context()
                except ContextError as error:
                    raise ProtocolError("too_large" if error.too_large else "bad_request", f"prompt: {error}") from None
                prompt = str(asked_prompt)
        self._update_asked = (beta, shown_language, prompt, model)
        return ConfigMessage(language=language, context=context)

    def _session(self, beta: bool = False) -> dict[str, Any]:
        transcription = {"model": self.transcription_model, "language": self.language, "prompt": self.prompt}
        turn = {"type": "server_vad"}
        if beta:
            return {"input_audio_format": "pcm16", "input_audio_transcription": transcription, "turn_detection": turn}
        return {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                                             "transcription": transcription, "turn_detection": turn}}}

    def caption(self, message: Caption) -> list[str]:
        if message.segment in self._dropped:
            if isinstance(message, Final):
                self._dropped.discard(message.segment)
            return []
        item = self._items.get(message.segment)
        out = []
        if item is None:
            item = self._items[message.segment] = _Item(f"item_{uuid.uuid4().hex[:20]}")
            out.append(self._event("input_audio_buffer.speech_started", audio_start_ms=round(message.start * 1000), item_id=item.id))
        final = isinstance(message, Final)
        # Deltas only add: while the utterance is spoken, the text partials promise to keep.
        text = message.text if final else message.text[: getattr(message, "stable", 0)]
        if final:
            out.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=round(message.end * 1000), item_id=item.id))
            out.append(self._event("input_audio_buffer.committed", item_id=item.id, previous_item_id=self._previous))
        if text.startswith(item.sent) and len(text) > len(item.sent):
            out.append(self._event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0,
                                   delta=text[len(item.sent):]))
            item.sent = text
        if final:
            out.append(self._event("conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
                                   transcript=message.text,
                                   usage={"type": "duration", "seconds": round(max(0.0, message.end - message.start), 3)}))
            self._previous = item.id
            del self._items[message.segment]
        return out

    def error(self, error: ProtocolError) -> str:
        return self._event("error", error={"type": "invalid_request_error", "code": error.code, "message": error.message, "param": None})

    def closing(self, audio_seconds: float) -> list[str]:
        return []

    @staticmethod
    def _event(kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, "event_id": f"event_{uuid.uuid4().hex[:20]}", **fields}, ensure_ascii=False, separators=(",", ":"))


def _object(value: Any, name: str) -> dict[str, Any]:
    """A field that must be an object when given (absent or null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", f"{name} must be an object")
    return value
