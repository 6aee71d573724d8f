"""OpenAI's realtime transcription API on /v1/realtime: both session shapes and the events as
logic, then OpenAI's official Python client (its current and its beta realtime interface)
against the real server and model, checked against the native protocol on the same audio."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest
from openai import OpenAI
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from streaming import auth
from streaming.compat.openai_realtime import RATE, OpenAIError, RealtimeDialect, parse_realtime
from streaming.events import Final, Partial, Ready
from streaming.protocol import AudioMessage, ClearMessage, ConfigMessage, FlushMessage, ProtocolError
from tests.conftest import CLIPS
from tests.test_auth import guarded  # noqa: F401  (the fixture: a server that needs tokens)
from tests.test_server import finals, pcm16, publish


def realtime(query: str = "intent=transcription") -> RealtimeDialect:
    return RealtimeDialect(parse_realtime(f"/v1/realtime?{query}", default_room="realtime-own"), "moonshine-base-en")


def events(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(t) for t in texts]


# -- the query and the session -------------------------------------------------------------------
def test_the_query_names_a_transcription_session():
    params = parse_realtime("/v1/realtime?intent=transcription&model=gpt-4o-transcribe&room=stage&speaker=Anna", "own")
    assert (params.publish.room, params.publish.speaker, params.publish.sample_rate, params.model) == ("stage", "Anna", RATE, "gpt-4o-transcribe")
    assert parse_realtime("/v1/realtime?intent=transcription", "own").publish.room == "own"
    for query, says in (("", "intent=transcription"), ("intent=conversation", "intent=transcription"),
                        ("intent=transcription&model=llama", "not an OpenAI transcription model"),
                        ("intent=transcription&voice=alloy", "unknown query parameter 'voice'"),
                        ("intent=transcription&room=a&room=b", "more than once")):
        with pytest.raises(OpenAIError, match=says) as refusal:
            parse_realtime(f"/v1/realtime?{query}", "own")
        assert refusal.value.status == 400 and json.loads(refusal.value.body("r"))["error"]["type"] == "invalid_request_error"


def test_both_session_shapes_configure_the_session_and_are_answered_in_their_own():
    dialect = realtime()
    (created,) = events(dialect.ready(Ready("s", "stage", "m", "en", RATE)))
    assert created["type"] == "session.created" and created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    command = dialect.client_message(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "Hester Prynne"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}))
    assert isinstance(command, ConfigMessage) and command.language == "en" and command.context is not None
    (updated,) = events(dialect.answers())
    assert updated["type"] == "session.updated" and updated["session"]["audio"]["input"]["transcription"]["prompt"] == "Hester Prynne"
    beta = dialect.client_message(json.dumps({"type": "transcription_session.update", "session": {
        "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"}, "turn_detection": {"type": "server_vad"}}}))
    assert isinstance(beta, ConfigMessage) and beta.context is None
    (answer,) = events(dialect.answers())
    assert answer["type"] == "transcription_session.updated" and answer["session"]["input_audio_transcription"]["model"] == "whisper-1"
    for bad, says in (
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}}, "audio/pcm at 24000"),
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}, "24000"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "only transcription sessions"),
        ({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}, "pcm16"),
        ({"type": "transcription_session.update", "session": {"turn_detection": {"type": "push_to_talk"}}}, "server_vad"),
        ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "base64"),
        ({"type": "response.create"}, "unsupported event type"),
    ):
        with pytest.raises(ProtocolError, match=says):
            dialect.client_message(json.dumps(bad))
    assert dialect.answers() == []  # a refused update is not answered as applied
    # An update the server then refuses (a language its model lacks) leaves the session as it was.
    dialect.client_message(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"language": "fr", "prompt": "Bonjour"}}}}}))
    assert dialect.answers(applied=False) == [] and (dialect.language, dialect.prompt) == ("en", "Hester Prynne")
    cleared = dialect.client_message(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"prompt": ""}}}}}))
    assert isinstance(cleared, ConfigMessage) and cleared.context is not None and not cleared.context  # an empty prompt clears it
    dialect.answers()
    nested = '{"text": ' + "[" * 5000  # deeper than the JSON parser goes
    with pytest.raises(ProtocolError):
        dialect.client_message(json.dumps({"type": "session.update", "session": {"audio": {"input": {"transcription": {"prompt": nested}}}}}))
    samples = pcm16(np.zeros(2400, np.float32))
    audio = dialect.client_message(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(samples).decode()}))
    assert audio == AudioMessage(samples)
    assert isinstance(dialect.client_message('{"type": "input_audio_buffer.commit"}'), FlushMessage)
    # turn_detection null (commits alone) is taken: the server still ends utterances at pauses.
    manual = dialect.client_message(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
    assert isinstance(manual, ConfigMessage) and events(dialect.answers())[0]["type"] == "transcription_session.updated"
    error = json.loads(dialect.error(ProtocolError("bad_request", "no")))
    assert error["type"] == "error" and error["error"]["message"] == "no"


def test_clear_drops_the_items_begun_and_what_the_session_still_says_of_them():
    dialect = realtime()
    dialect.ready(Ready("s", "stage", "m", "en", RATE))
    begun = events(dialect.caption(Partial("stage", "s", "", 3, "It was the", 6, 0.5, 1.2, "en")))
    assert begun[0]["type"] == "input_audio_buffer.speech_started"
    assert isinstance(dialect.client_message('{"type": "input_audio_buffer.clear"}'), ClearMessage)
    assert [e["type"] for e in events(dialect.answers())] == ["input_audio_buffer.cleared"]
    assert dialect.caption(Final("stage", "s", "", 3, "", 0.5, 1.4, "en")) == []  # the session's withdrawal of segment 3
    after = events(dialect.caption(Final("stage", "s", "", 4, "Next.", 2.0, 2.5, "en")))
    assert after[-1]["type"] == "conversation.item.input_audio_transcription.completed" and after[-1]["transcript"] == "Next."
    dialect.client_message('{"type": "input_audio_buffer.clear"}')
    assert dialect.answers(applied=False) == []  # refused (it never is): nothing said


def test_an_utterance_is_an_item_whose_stable_text_grows_by_deltas():
    dialect = realtime()
    out = events(dialect.caption(Partial("stage", "s", "", 0, "It was the", 6, 0.5, 1.2, "en")))
    out += events(dialect.caption(Partial("stage", "s", "", 0, "It was the first great", 15, 0.5, 2.0, "en")))
    out += events(dialect.caption(Final("stage", "s", "", 0, "It was the first great sorrow.", 0.5, 2.4, "en", seq=1)))
    assert [e["type"] for e in out] == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert len({e["item_id"] for e in out}) == 1 and out[0]["audio_start_ms"] == 500 and out[3]["audio_end_ms"] == 2400
    deltas = "".join(e["delta"] for e in out if e["type"].endswith(".delta"))
    assert deltas == out[-1]["transcript"] == "It was the first great sorrow."
    assert out[1]["delta"] == "It was"  # only what partials promise to keep
    assert out[4]["previous_item_id"] is None
    # The next utterance is a new item after this one; a final that corrects the deltas is
    # authoritative in completed.
    first = out[0]["item_id"]
    nxt = events(dialect.caption(Partial("stage", "s", "", 1, "Anything", 8, 3.0, 3.5, "en")))
    nxt += events(dialect.caption(Final("stage", "s", "", 1, "Any thing.", 3.0, 3.8, "en", seq=2)))
    committed = next(e for e in nxt if e["type"] == "input_audio_buffer.committed")
    assert committed["previous_item_id"] == first and committed["item_id"] != first
    assert nxt[-1]["transcript"] == "Any thing." and not any(e.get("delta") == " thing." for e in nxt)


# -- the official client, the real server and model ----------------------------------------------
def _at_24k(audio: np.ndarray) -> np.ndarray:
    positions = np.arange(int(len(audio) * RATE / 16000)) * 16000 / RATE
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)


def _client(url: str, key: str = "any-key") -> OpenAI:
    # The beta interface takes wss:// unless told the WebSocket address.
    return OpenAI(api_key=key, base_url=url.replace("ws://", "http://") + "/v1", websocket_base_url=url + "/v1", max_retries=0)


def _transcribe(connection, audio: np.ndarray, expected: int) -> list[Any]:
    """Append ``audio`` (0.2 s a message), commit, and read events until ``expected`` items
    are completed."""
    data = pcm16(audio)
    for offset in range(0, len(data), 9600):
        connection.input_audio_buffer.append(audio=base64.b64encode(data[offset : offset + 9600]).decode())
    connection.input_audio_buffer.commit()
    received: list[Any] = []
    while sum(e.type == "conversation.item.input_audio_transcription.completed" for e in received) < expected:
        received.append(connection.recv())
    return received


def test_the_official_client_gets_the_native_protocol_s_finals_and_the_room_sees_them(server):
    clip = CLIPS["en_jfk_inaugural"]
    audio = np.concatenate([_at_24k(clip.audio), np.zeros(16000, np.float32)])  # as publish() ends it
    native, _ = publish(server.url, audio[:-16000], f"room=native-{uuid.uuid4().hex[:6]}&sample_rate={RATE}")
    expected = [f["text"] for f in finals(native)]
    room = f"oa-{uuid.uuid4().hex[:6]}"
    with connect(f"{server.url}/v1/captions?room={room}") as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        with _client(server.url).realtime.connect(extra_query={"intent": "transcription", "room": room}) as connection:
            assert connection.recv().type == "session.created"
            connection.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": {"type": "server_vad"}}}})
            assert connection.recv().type == "session.updated"
            received = _transcribe(connection, audio, len(expected))
        seen = []
        while len(seen) < len(expected):
            message = json.loads(viewer.recv(timeout=30))
            if message["type"] == "final":
                seen.append(message["text"])
    completed = [e for e in received if e.type == "conversation.item.input_audio_transcription.completed"]
    assert [e.transcript for e in completed] == expected == seen and expected
    # Per item: speech_started first, committed before completed, and items chained in order.
    for item in completed:
        mine = [e.type for e in received if getattr(e, "item_id", None) == item.item_id]
        assert mine[0] == "input_audio_buffer.speech_started" and mine[-1].endswith(".completed")
        assert mine.index("input_audio_buffer.committed") < len(mine) - 1
    committed = [e for e in received if e.type == "input_audio_buffer.committed"]
    assert [c.previous_item_id for c in committed[1:]] == [c.item_id for c in committed[:-1]]


def _gauges(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url.replace("ws://", "http://") + "/metrics", timeout=10).read().decode()
    return {name: float(value) for name, value in (line.split() for line in text.splitlines() if line and not line.startswith("#") and "{" not in line)}


def test_the_beta_interface_and_its_session_shape(server):
    clip = CLIPS["en_jfk_inaugural"]
    audio = _at_24k(clip.audio[: 4 * 16000])
    before = _gauges(server.url)
    with _client(server.url).beta.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as connection:
        assert connection.recv().type == "session.created"
        connection.send({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad"}}})
        assert connection.recv().type == "transcription_session.updated"
        received = _transcribe(connection, audio, 1)
        connection.send({"type": "input_audio_buffer.clear"})
        assert connection.recv().type == "input_audio_buffer.cleared"  # and the stream goes on
        connection.send({"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "fr"}}})
        refused = connection.recv()  # English-only model: refused, and not answered as applied
        assert refused.type == "error" and "does not support language 'fr'" in refused.error.message
    completed = [e for e in received if e.type == "conversation.item.input_audio_transcription.completed"]
    assert completed and completed[0].transcript
    # The client closed the connection: its session ends (OpenAI's clients cannot resume one),
    # rather than waiting to be resumed.
    deadline = time.monotonic() + 10
    while _gauges(server.url)["flashcaption_publishers"] > before["flashcaption_publishers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _gauges(server.url)
    assert after["flashcaption_publishers"] == before["flashcaption_publishers"]
    assert after["flashcaption_sessions_resumable"] == before["flashcaption_sessions_resumable"]


def test_bad_requests_and_bad_keys_are_refused_before_the_upgrade(guarded):  # noqa: F811
    for path, status in (("/v1/realtime?model=gpt-4o-transcribe", 400), ("/v1/realtime?intent=transcription&room=hall", 401)):
        with pytest.raises(InvalidStatus) as refusal:
            with connect(f"{guarded.url}{path}", additional_headers={"Authorization": "Bearer not-a-token"}):
                pass
        assert refusal.value.response.status_code == status
        assert json.loads(refusal.value.response.body)["error"]["message"]
    token = auth.create_token(guarded.secret, "hall", "publish", 60)
    with _client(guarded.url, key=token).realtime.connect(extra_query={"intent": "transcription", "room": "hall"}) as connection:
        assert connection.recv().type == "session.created"
