"""Other services' dialects (streaming/compat) fuzzed as logic (Hypothesis): whatever JSON a
client sends, or whatever query it connects with, the answer is a command or a clear refusal
(a ProtocolError), never another exception, which would end the connection as an internal
error."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.compat.deepgram import DeepgramDialect, parse_listen
from streaming.compat.openai_realtime import RealtimeDialect, parse_realtime
from streaming.protocol import ProtocolError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

def _shaped(fields: dict[str, Any]) -> Any:
    """An object with some of these fields (each of its own shape, or any JSON), or any JSON."""
    return st.fixed_dictionaries({}, optional={name: shape | JSON for name, shape in fields.items()}) | JSON


TRANSCRIPTION = _shaped({"model": st.sampled_from(["whisper-1", "gpt-4o-transcribe", "x"]), "language": st.sampled_from(["en", "fr", "??"]),
                         "prompt": st.text(max_size=30)})
TURN = _shaped({"type": st.sampled_from(["server_vad", "semantic_vad", "none"])})
SHAPES = _shaped({
    "type": st.sampled_from(["transcription", "realtime"]),
    "audio": _shaped({"input": _shaped({"format": _shaped({"type": st.sampled_from(["audio/pcm", "audio/pcmu"]), "rate": st.sampled_from([24000, 16000])}),
                                        "transcription": TRANSCRIPTION, "turn_detection": TURN, "noise_reduction": JSON})}),
    "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw"]),
    "input_audio_transcription": TRANSCRIPTION,
    "turn_detection": TURN,
})
TYPES = ("session.update", "transcription_session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
         "input_audio_buffer.clear", "KeepAlive", "Finalize", "CloseStream", "other")


def _answer(dialect: Any, message: Any) -> None:
    try:
        dialect.client_message(json.dumps(message))
    except ProtocolError:
        pass
    dialect.answers()


@settings(max_examples=1000, deadline=None)
@given(kind=st.sampled_from(TYPES) | st.sampled_from(("session.update", "transcription_session.update")), session=SHAPES, audio=JSON)
def test_any_json_event_is_a_command_or_a_clear_refusal(kind: str, session: Any, audio: Any) -> None:
    realtime = RealtimeDialect(parse_realtime("/v1/realtime?intent=transcription", "own"), "m")
    deepgram = DeepgramDialect(parse_listen("/v1/listen?encoding=linear16&sample_rate=16000", "own"), "m")
    for message in ({"type": kind, "session": session, "audio": audio}, session, {"type": kind}):
        _answer(realtime, message)
        _answer(deepgram, message)


@settings(max_examples=300, deadline=None)
@given(query=st.lists(st.tuples(st.sampled_from(("encoding", "sample_rate", "channels", "language", "model", "interim_results",
                                                   "utterance_end_ms", "keyterm", "keywords", "room", "speaker", "intent",
                                                   "diarize", "x")), st.text(max_size=30)), max_size=8))
def test_any_query_is_read_or_refused_clearly(query: list[tuple[str, str]]) -> None:
    encoded = urlencode(query)
    for parse, path in ((parse_listen, "/v1/listen"), (parse_realtime, "/v1/realtime")):
        try:
            parse(f"{path}?{encoded}", "own")
        except ProtocolError:
            pass
