"""Deepgram's live API on /v1/listen: the query and messages as Deepgram documents them (logic),
then Deepgram's official Python client and a raw WebSocket client against the real server and
model, checked against the native protocol on the same recording."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from typing import Any

import pytest
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types.listen_v1configure import ListenV1Configure
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from decoder.api import SAMPLE_RATE
from streaming import auth
from streaming.compat.deepgram import DeepgramDialect, DeepgramError, parse_listen, subprotocol_key
from streaming.compat.routes import select_subprotocol
from streaming.events import Final, Partial, Ready
from streaming.protocol import ConfigMessage, EndMessage, FlushMessage, ProtocolError
from tests.conftest import CLIPS
from tests.test_auth import guarded  # noqa: F401  (the fixture: a server that needs tokens)
from tests.test_server import finals, pcm16, publish

ROOM = "stage"


def listen(query: str):
    return parse_listen(f"/v1/listen?{query}", default_room="listen-own")


# -- the query --------------------------------------------------------------------------------
def test_the_query_is_read_as_deepgram_documents_it():
    params = listen("model=nova-3&encoding=linear16&sample_rate=48000&channels=1&language=en-US&interim_results=true"
                    "&vad_events=true&utterance_end_ms=1000&keyterm=Hester%20Prynne&keyterm=Qwen3-ASR&keywords=Dimmesdale:2"
                    "&punctuate=true&smart_format=true&endpointing=300&diarize=false&room=stage&speaker=Anna")
    publish = params.publish
    assert (publish.room, publish.speaker, publish.language, publish.sample_rate, publish.encoding) == ("stage", "Anna", "en", 48000, "pcm_s16le")
    assert publish.mode == "file"  # audio as fast as it comes, with back-pressure, as Deepgram takes it
    assert publish.context is not None and [t.text for t in publish.context.terms] == ["Hester Prynne", "Qwen3-ASR", "Dimmesdale"]
    assert (params.model, params.interim_results, params.vad_events, params.utterance_end_ms) == ("nova-3", True, True, 1000)
    assert set(params.ignored) == {"punctuate", "smart_format", "endpointing"}
    defaults = listen("encoding=linear16&sample_rate=16000")
    assert (defaults.publish.room, defaults.publish.language, defaults.interim_results, defaults.vad_events) == ("listen-own", "en", False, False)
    assert listen("encoding=linear16&sample_rate=16000&language=multi").publish.language == "auto"
    for model in ("nova-2", "nova-3-general", "base", "enhanced-meeting", "whisper-large"):
        assert listen(f"encoding=linear16&sample_rate=16000&model={model}").model == model


@pytest.mark.parametrize("query, says", [
    ("sample_rate=16000", "encoding=linear16"),
    ("encoding=mulaw&sample_rate=8000", "not supported"),
    ("encoding=linear16", "sample_rate is required"),
    ("encoding=linear16&sample_rate=4000", "8000-48000"),
    ("encoding=linear16&sample_rate=16000&channels=2", "channels must be 1"),
    ("encoding=linear16&sample_rate=16000&model=gpt-4o", "not a Deepgram model"),
    ("encoding=linear16&sample_rate=16000&language=english!", "BCP-47"),
    ("encoding=linear16&sample_rate=16000&diarize=true", "diarization is not supported"),
    ("encoding=linear16&sample_rate=16000&multichannel=true", "one channel per stream"),
    ("encoding=linear16&sample_rate=16000&redact=pci", "redaction"),
    ("encoding=linear16&sample_rate=16000&utterance_end_ms=1000", "needs interim_results=true"),
    ("encoding=linear16&sample_rate=16000&interim_results=true&utterance_end_ms=500", "1000-5000"),
    ("encoding=linear16&sample_rate=16000&interim_results=true&utterance_end_ms=%C2%B2", "1000-5000"),  # a digit int() refuses
    ("encoding=linear16&sample_rate=16000&interim_results=maybe", "true or false"),
    ("encoding=linear16&sample_rate=16000&colour=blue", "unknown query parameter 'colour'"),
    ("encoding=linear16&sample_rate=16000&room=a%20b", "room"),
])
def test_a_query_deepgram_would_refuse_is_refused_with_what_to_do(query: str, says: str):
    with pytest.raises(DeepgramError, match=says) as refusal:
        listen(query)
    assert refusal.value.status == 400 and json.loads(refusal.value.body("r"))["err_code"] == "Bad Request"


# -- the messages ------------------------------------------------------------------------------
def _caption(kind: type, segment: int, text: str, start: float, end: float) -> Any:
    if kind is Partial:
        return Partial("stage", "s", "", segment, text, 0, start, end, "en")
    return Final("stage", "s", "", segment, text, start, end, "en", seq=segment + 1)


def test_captions_become_results_speech_started_and_utterance_end():
    dialect = DeepgramDialect(listen("encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true&utterance_end_ms=1000"), "moonshine-base-en")
    assert dialect.ready(Ready("s", "stage", "m", "en", 16000)) == []  # Deepgram says nothing first
    sent = [json.loads(t) for t in dialect.caption(_caption(Partial, 0, "Hello", 1.0, 1.6))]
    sent += [json.loads(t) for t in dialect.caption(_caption(Partial, 0, "Hello there", 1.0, 2.0))]
    sent += [json.loads(t) for t in dialect.caption(_caption(Final, 0, "Hello there.", 1.0, 2.1))]
    assert [m["type"] for m in sent] == ["SpeechStarted", "Results", "Results", "Results", "UtteranceEnd"]
    assert sent[0]["timestamp"] == 1.0
    interim, final = sent[2], sent[3]
    assert (interim["is_final"], final["is_final"], final["speech_final"], final["from_finalize"]) == (False, True, True, False)
    assert final["start"] == 1.0 and final["duration"] == pytest.approx(1.1)
    alternative = final["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Hello there."
    words = alternative["words"]
    assert [w["word"] for w in words] == ["hello", "there"] and [w["punctuated_word"] for w in words] == ["Hello", "there."]
    assert words[0]["start"] == 1.0 and words[-1]["end"] == pytest.approx(2.1) and words[0]["end"] == words[1]["start"]
    assert final["metadata"]["model_info"]["name"] == "nova-3" and final["metadata"]["request_id"] == dialect.request_id
    assert sent[4]["last_word_end"] == 2.1
    # The next utterance starts again; without interim_results only finals go out.
    assert json.loads(dialect.caption(_caption(Partial, 1, "Again", 3.0, 3.5))[0])["type"] == "SpeechStarted"
    quiet = DeepgramDialect(listen("encoding=linear16&sample_rate=16000"), "m")
    assert quiet.caption(_caption(Partial, 0, "Hello", 1.0, 1.6)) == []
    # Without interim results, SpeechStarted still comes with the utterance's first words.
    starts = DeepgramDialect(listen("encoding=linear16&sample_rate=16000&vad_events=true"), "m")
    assert [json.loads(t)["type"] for t in starts.caption(_caption(Partial, 0, "Hello", 1.0, 1.6))] == ["SpeechStarted"]
    assert [json.loads(t)["type"] for t in quiet.caption(_caption(Final, 0, "Hello.", 1.0, 1.7))] == ["Results"]


def test_client_messages_keepalive_finalize_and_close_stream():
    dialect = DeepgramDialect(listen("encoding=linear16&sample_rate=16000"), "m")
    assert dialect.client_message('{"type": "KeepAlive"}') is None
    assert isinstance(dialect.client_message('{"type": "Finalize"}'), FlushMessage)
    answer = json.loads(dialect.caption(_caption(Final, 0, "Cut here.", 0.5, 1.5))[0])
    assert answer["from_finalize"] and answer["is_final"] and not answer["speech_final"]
    assert not json.loads(dialect.caption(_caption(Final, 1, "Next.", 2.0, 2.5))[0])["from_finalize"]
    # A Finalize with nothing to finalise does not mark the next utterance.
    dialect.client_message('{"type": "Finalize"}')
    dialect.caption(_caption(Partial, 2, "Later", 4.0, 4.5))
    assert not json.loads(dialect.caption(_caption(Final, 2, "Later on.", 4.0, 5.0))[0])["from_finalize"]
    assert isinstance(dialect.client_message('{"type": "CloseStream"}'), EndMessage)
    for bad in ("[1]", "not json", '{"type": 3}', '{"type": ' + "1" * 5000 + "}"):
        with pytest.raises(ProtocolError):
            dialect.client_message(bad)
    error = json.loads(dialect.error(ProtocolError("bad_request", "no")))
    assert error == {"type": "Error", "variant": "bad_request", "description": "no"}
    (metadata,) = [json.loads(t) for t in dialect.closing(12.5)]
    assert metadata["type"] == "Metadata" and metadata["duration"] == 12.5 and metadata["request_id"] == dialect.request_id


def test_configure_replaces_the_keyterms_and_is_answered_either_way():
    dialect = DeepgramDialect(listen("encoding=linear16&sample_rate=16000&keyterm=Hester"), "m")
    command = dialect.client_message(json.dumps({"type": "Configure", "keyterms": ["Prynne", " ", "Dimmesdale"], "features": {"numerals": True}}))
    assert isinstance(command, ConfigMessage) and [t.text for t in command.context.terms] == ["Prynne", "Dimmesdale"]
    (success,) = [json.loads(t) for t in dialect.answers()]
    assert success == {"type": "ConfigureSuccess", "request_id": dialect.request_id, "keyterms": ["Prynne", "Dimmesdale"]}
    cleared = dialect.client_message('{"type": "Configure", "keyterms": []}')
    assert isinstance(cleared, ConfigMessage) and cleared.context is not None and not cleared.context.terms
    dialect.answers()
    kept = dialect.client_message('{"type": "Configure", "features": {"numerals": false}}')
    assert kept == ConfigMessage() and "keyterms" not in json.loads(dialect.answers()[0])
    # Refused: answered with ConfigureFailure and its code, and the stream goes on (not too_large).
    for message, code in (({"type": "Configure", "keyterms": [f"term{i}" for i in range(101)]}, "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"),
                          ({"type": "Configure", "keyterms": "Prynne"}, "CONFIGURE_INTERNAL_ERROR"),
                          ({"type": "Configure", "features": {"numerals": "yes"}}, "CONFIGURE_INTERNAL_ERROR")):
        with pytest.raises(ProtocolError) as refusal:
            dialect.client_message(json.dumps(message))
        assert refusal.value.code == "bad_request" and dialect.answers(applied=False) == []
        failure = json.loads(dialect.error(refusal.value))
        assert failure["type"] == "ConfigureFailure" and failure["code"] == code and failure["description"]
    # A Configure the server itself refused after reading it.
    dialect.client_message('{"type": "Configure", "keyterms": ["x"]}')
    assert dialect.answers(applied=False) == [] and json.loads(dialect.error(ProtocolError("bad_request", "no")))["type"] == "ConfigureFailure"
    assert json.loads(dialect.error(ProtocolError("bad_request", "no")))["type"] == "Error"  # the next error is an Error again


def test_a_browser_s_key_as_subprotocols_is_read_and_answered():
    assert subprotocol_key(["token", "KEY"]) == "KEY" and subprotocol_key(["bearer", "KEY"]) == "KEY"
    assert subprotocol_key(["token"]) is None and subprotocol_key(["chat", "KEY"]) is None
    assert select_subprotocol("/v1/listen?encoding=linear16", ["token", "KEY"]) == "token"
    assert select_subprotocol("/v1/publish", ["token", "KEY"]) is None


# -- the official client, the real server and model ----------------------------------------------
def _client(url: str, key: str = "any-key") -> DeepgramClient:
    http = url.replace("ws://", "http://")
    return DeepgramClient(api_key=key, environment=DeepgramClientEnvironment(base=http, production=url, agent=url, agent_rest=http))


def _stream_with_sdk(url: str, audio, room: str, pace: float = 0.0, **options: Any) -> list[Any]:
    """Stream ``audio`` (then 1 s of silence) through Deepgram's client, as fast as the server
    takes it, or 0.2 s of it every ``pace`` seconds; every message back."""
    received: list[Any] = []
    client = _client(url)
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=SAMPLE_RATE, request_options={"additional_query_parameters": {"room": room}}, **options
    ) as socket:
        reader = threading.Thread(target=lambda: received.extend(socket))
        reader.start()
        data = pcm16(audio) + bytes(2 * SAMPLE_RATE)
        for offset in range(0, len(data), 6400):
            socket.send_media(data[offset : offset + 6400])
            time.sleep(pace)
        socket.send_keep_alive()
        socket.send_close_stream()
        reader.join(120)
    return received


def test_the_official_client_gets_the_native_protocol_s_finals_and_the_room_sees_them(server):
    clip = CLIPS["en_jfk_inaugural"]
    native, _ = publish(server.url, clip.audio, f"room=native-{uuid.uuid4().hex[:6]}")
    room = f"dg-{uuid.uuid4().hex[:6]}"
    with connect(f"{server.url}/v1/captions?room={room}") as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "ready"
        received = _stream_with_sdk(server.url, clip.audio, room, interim_results="true", vad_events="true", utterance_end_ms="1000")
        results = [m for m in received if m.type == "Results"]
        deepgram_finals = [r.channel.alternatives[0].transcript for r in results if r.is_final]
        assert deepgram_finals == [f["text"] for f in finals(native)] and deepgram_finals
        seen = []
        while len(seen) < len(deepgram_finals):
            message = json.loads(viewer.recv(timeout=30))
            if message["type"] == "final":
                seen.append(message["text"])
        assert seen == deepgram_finals  # the room's viewers see the session like any other
    # The order Deepgram gives: each utterance's SpeechStarted, interim results, its final,
    # then UtteranceEnd; Metadata last. At twice real time, so that partials have time to come.
    received = _stream_with_sdk(server.url, clip.audio, room, pace=0.1, interim_results="true", vad_events="true", utterance_end_ms="1000")
    results = [m for m in received if m.type == "Results"]
    kinds = [m.type for m in received]
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "Metadata"
    assert any(r.is_final is False for r in results)
    for index, message in enumerate(received[:-1]):
        if message.type == "Results" and message.is_final:
            assert received[index + 1].type == "UtteranceEnd"
            assert received[index + 1].last_word_end == pytest.approx(message.start + message.duration, abs=0.002)
            assert message.speech_final and message.channel.alternatives[0].words
    assert received[-1].duration == pytest.approx(len(clip.audio) / SAMPLE_RATE + 1.0, abs=0.05)
    starts = [i for i, kind in enumerate(kinds) if kind == "SpeechStarted"]
    assert len(starts) == sum(1 for r in results if r.is_final)  # one per utterance, before its results


def test_finalize_through_the_official_client_sends_the_words_so_far(server):
    clip = CLIPS["en_jfk_inaugural"]
    received: list[Any] = []
    with _client(server.url).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=SAMPLE_RATE) as socket:
        reader = threading.Thread(target=lambda: received.extend(socket))
        reader.start()
        data = pcm16(clip.audio[: 3 * SAMPLE_RATE])  # mid-sentence
        for offset in range(0, len(data), 6400):
            socket.send_media(data[offset : offset + 6400])
        socket.send_finalize()
        socket.send_close_stream()
        reader.join(120)
    results = [m for m in received if m.type == "Results"]
    assert results and all(r.is_final for r in results)  # no interim results unless asked
    assert results[0].from_finalize and not results[0].speech_final and results[0].channel.alternatives[0].transcript


def test_a_raw_client_sending_what_deepgram_documents(server):
    """Exactly the documented wire format, no SDK: Token auth header, binary audio, JSON control."""
    clip = CLIPS["en_jfk_inaugural"]
    query = urllib.parse.urlencode({"model": "nova-3", "encoding": "linear16", "sample_rate": 16000, "channels": 1, "punctuate": "true"})
    with connect(f"{server.url}/v1/listen?{query}", additional_headers={"Authorization": "Token 0123456789abcdef"}) as ws:
        data = pcm16(clip.audio) + bytes(2 * SAMPLE_RATE)
        for offset in range(0, len(data), 8000):  # 250 ms a message, the most Deepgram advises
            ws.send(data[offset : offset + 8000])
        ws.send(json.dumps({"type": "KeepAlive"}))
        ws.send(json.dumps({"type": "CloseStream"}))
        messages = []
        for raw in ws:
            messages.append(json.loads(raw))
    assert messages[-1]["type"] == "Metadata" and ws.close_code == 1000
    texts = [m["channel"]["alternatives"][0]["transcript"] for m in messages if m["type"] == "Results"]
    assert texts and all(m["is_final"] for m in messages if m["type"] == "Results")
    # A bad control message is answered with an Error, and the stream goes on.
    with connect(f"{server.url}/v1/listen?{query}") as ws:
        ws.send(json.dumps({"type": "Shout"}))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "Error" and "unknown message type" in error["description"]
        ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "Metadata"


def _status(refusal: BaseException) -> int:
    """The HTTP status of a refused connection, as the client reports it: its ApiError, or with
    websockets 14 and later (whose refusal the client does not translate) websockets' own."""
    return refusal.status_code if isinstance(refusal, ApiError) else refusal.response.status_code  # type: ignore[attr-defined]


def test_bad_parameters_and_bad_keys_are_refused_before_the_upgrade(guarded):  # noqa: F811
    with pytest.raises((ApiError, InvalidStatus)) as refusal:  # the official client: a Deepgram-style HTTP status
        with _client(guarded.url).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000, diarize="true"):
            pass
    assert _status(refusal.value) == 400
    with pytest.raises((ApiError, InvalidStatus)) as refusal:
        with _client(guarded.url, key="not-a-token").listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000):
            pass
    assert _status(refusal.value) == 401
    # A raw client reads the reason in the body.
    with pytest.raises(InvalidStatus) as raw:
        with connect(f"{guarded.url}/v1/listen?encoding=linear16&sample_rate=16000&room=hall"):
            pass
    body = json.loads(raw.value.response.body)
    assert raw.value.response.status_code == 401 and body["err_code"] == "INVALID_AUTH" and body["request_id"]
    # The right token, as Deepgram's key or in the query, is let in.
    in_query = auth.create_token(guarded.secret, "hall", "publish", 60)
    with connect(f"{guarded.url}/v1/listen?encoding=linear16&sample_rate=16000&room=hall&token={in_query}") as ws:
        ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "Metadata"
    # As a browser sends it (Sec-WebSocket-Protocol: token, KEY), answered with "token" as it must be.
    with connect(f"{guarded.url}/v1/listen?encoding=linear16&sample_rate=16000&room=hall", subprotocols=["token", in_query]) as ws:
        assert ws.subprotocol == "token"
        ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "Metadata"
    with pytest.raises(InvalidStatus) as bad_subprotocol:
        with connect(f"{guarded.url}/v1/listen?encoding=linear16&sample_rate=16000&room=hall", subprotocols=["token", "not-a-token"]):
            pass
    assert bad_subprotocol.value.response.status_code == 401
    token = auth.create_token(guarded.secret, "hall", "publish", 60)
    with _client(guarded.url, key=token).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, request_options={"additional_query_parameters": {"room": "hall"}}
    ) as socket:
        socket.send_configure(ListenV1Configure(keyterms=["Hester Prynne"]))  # the client's own Configure
        socket.send_configure(ListenV1Configure(keyterms=[f"term{i}" for i in range(101)]))
        socket.send_close_stream()
        messages = list(socket)
    assert [m.type for m in messages] == ["ConfigureSuccess", "ConfigureFailure", "Metadata"]
    assert messages[0].keyterms == ["Hester Prynne"] and messages[1].code == "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"
