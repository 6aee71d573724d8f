"""OpenAI's file transcription API, POST /v1/audio/transcriptions: the form and the response
formats as logic; the request over HTTP (h11 beside websockets on one port) with the scripted
model, raw and through OpenAI's official client; then the real model on real recordings in
every response format, checked against the native protocol's finals on the same audio."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt
from websockets.sync.client import connect

from streaming import auth
from streaming.compat.openai_files import FileDialect, FileRequest, parse_form, render, stream_delta, stream_done
from streaming.compat.openai_realtime import OpenAIError
from streaming.config import ServerConfig
from streaming.events import Final, Ready
from streaming.server import CaptionServer, front
from streaming.server.transcribe import read_form
from tests.conftest import CLIPS, ServerThread
from tests.scripted import ScriptedModel, speak
from tests.test_auth import guarded  # noqa: F401  (the fixture: a server that needs tokens)
from tests.test_server import finals, publish

SR = 16000


def wav_bytes(audio: np.ndarray, rate: int = SR) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def encoded(audio: np.ndarray, container: str, codec: str, rate: int, layout: str = "stereo") -> bytes:
    """``audio`` (16 kHz mono) encoded by FFmpeg, resampled to ``rate`` and ``layout`` first."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate)
        stream.layout = layout
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        frame = av.AudioFrame.from_ndarray((np.clip(audio, -1, 1) * 32767).astype("<i2")[None, :], format="s16", layout="mono")
        frame.sample_rate = SR
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


def client(url: str, key: str = "any-key") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=url.replace("ws://", "http://") + "/v1", max_retries=0)


def finals_of(server: ServerThread, room: str, timeout: float = 10) -> list[dict]:
    """The room's finals, as a viewer that joins after they were made gets them."""
    with connect(f"{server.url}/v1/captions?room={room}&since=0") as viewer:
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(json.loads(viewer.recv(timeout=1 if messages else timeout)))
    return [m for m in messages if m["type"] == "final"]


def form(**fields: str) -> dict[str, list[str]]:
    return {name: [value] for name, value in fields.items()}


# -- the form and the answers --------------------------------------------------------------------
def test_the_form_names_a_session_and_what_comes_back():
    asked = parse_form(form(model="whisper-1", language="de", prompt="Hester Prynne", response_format="verbose_json")
                       | {"timestamp_granularities[]": ["word", "segment"]}, {"room": "stage", "speaker": "Anna"}, "own")
    assert (asked.publish.room, asked.publish.speaker, asked.publish.language, asked.response_format, asked.words) == (
        "stage", "Anna", "de", "verbose_json", True)
    assert asked.publish.context is not None and not asked.publish.partials and asked.publish.mode == "file"
    assert parse_form(form(model="gpt-4o-transcribe", temperature="0.2"), {}, "own").ignored == ("temperature",)
    for fields, query, says in (
        ({}, {}, "provide a model"),
        (form(model="llama"), {}, "not an OpenAI transcription model"),
        (form(model="whisper-1", response_format="xml"), {}, "response_format must be one of"),
        (form(model="whisper-1", voice="alloy"), {}, "Unrecognized request argument supplied: voice"),
        (form(model="whisper-1", response_format="srt", stream="true"), {}, "stream=true takes"),
        (form(model="whisper-1", temperature="3"), {}, "temperature"),
        (form(model="whisper-1") | {"timestamp_granularities[]": ["word"]}, {}, "only supported with response_format verbose_json"),
        ({"model": ["whisper-1", "whisper-1"]}, {}, "more than once"),
        (form(model="whisper-1", language="english!"), {}, "ISO-639-1"),
        (form(model="whisper-1"), {"room": "a/b"}, "room must be"),
        (form(model="whisper-1"), {"voice": "x"}, "unknown query parameter"),
    ):
        with pytest.raises(OpenAIError, match=says) as refusal:
            parse_form(fields, query, "own")
        assert refusal.value.status == 400 and json.loads(refusal.value.body("r"))["error"]["type"] == "invalid_request_error"


def test_every_response_format_parses_as_what_it_claims_to_be():
    finals = [Final("r", "s", "", 0, "Ask not.", 0.5, 1.7, "en", seq=1), Final("r", "s", "", 1, "What your country can do.", 2.0, 4.25, "en", seq=2)]
    asked = parse_form(form(model="whisper-1"), {}, "own")

    def body(response_format: str, words: bool = False) -> str:
        return render(FileRequest(asked.publish, "whisper-1", response_format, words), finals, "en", 5.0)[0]

    assert json.loads(body("json")) == {"text": "Ask not. What your country can do.", "usage": {"type": "duration", "seconds": 5.0}}
    assert body("text") == "Ask not. What your country can do.\n"
    cues = list(srt.parse(body("srt")))
    assert [c.content for c in cues] == ["Ask not.", "What your country can do."] and cues[1].start.total_seconds() == 2.0
    assert [c.text for c in webvtt.from_buffer(io.StringIO(body("vtt")))] == ["Ask not.", "What your country can do."]
    verbose = json.loads(body("verbose_json", words=True))
    assert verbose["language"] == "english" and verbose["duration"] == 5.0
    assert [(s["start"], s["end"], s["text"]) for s in verbose["segments"]] == [(0.5, 1.7, " Ask not."), (2.0, 4.25, " What your country can do.")]
    words = verbose["words"]
    assert [w["word"] for w in words] == ["Ask", "not.", "What", "your", "country", "can", "do."]
    assert words[0]["start"] == 0.5 and words[-1]["end"] == 4.25 and all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))
    # Chinese and Japanese are not joined with spaces; the language found wins under auto.
    cjk = [Final("r", "s", "", 0, "你好。", 0, 1, "zh"), Final("r", "s", "", 1, "谢谢。", 1, 2, "zh")]
    assert json.loads(render(FileRequest(asked.publish, "whisper-1", "verbose_json"), cjk, "auto", 2.0)[0])["text"] == "你好。谢谢。"


def test_streamed_events_are_deltas_that_add_up_to_the_text():
    finals = [Final("r", "s", "", 0, "Ask not.", 0, 1, "en"), Final("r", "s", "", 1, "What you can do.", 1, 2, "en")]
    events = [json.loads(stream_delta(f, first=i == 0)[6:]) for i, f in enumerate(finals)]
    done = json.loads(stream_done(finals, "en")[6:])
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 and done["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in events) == done["text"] == "Ask not. What you can do."


def test_the_dialect_keeps_the_finals_and_sends_nothing():
    dialect = FileDialect(parse_form(form(model="whisper-1"), {}, "own"))
    assert dialect.ready(Ready("s", "own", "m", "auto", SR)) == [] and dialect.language == "auto"
    assert dialect.caption(Final("own", "s", "", 0, "Hello.", 0, 1, "en")) == [] and [f.text for f in dialect.finals] == ["Hello."]
    assert dialect.caption(Final("own", "s", "", 1, " ", 1, 2, "en")) == [] and len(dialect.finals) == 1  # nothing said: no segment


def test_a_multipart_body_is_read_as_the_client_wrote_it():
    audio = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    request = httpx.Request("POST", "http://x/v1/audio/transcriptions", data={"model": "whisper-1", "prompt": "Zoë, \"quoted\""},
                            files={"file": ("a.wav", audio, "audio/wav")})
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    fields, file = read_form(request.read(), boundary)
    assert fields == {"model": ["whisper-1"], "prompt": ["Zoë, \"quoted\""]} and file == audio
    many = httpx.Request("POST", "http://x", data={f"f{i}": "1" for i in range(40)}, files={"file": b"x"})
    with pytest.raises(OpenAIError, match="more than 32 fields"):
        read_form(many.read(), many.headers["Content-Type"].split("boundary=")[1].encode())


# -- over HTTP, with the scripted model ----------------------------------------------------------
@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("files"), max_transcription_bytes=2_000_000, max_transcription_audio_s=60)
    running = ServerThread(CaptionServer(config, ScriptedModel())).start()
    yield running
    running.stop()


def raw(server: ServerThread, request: bytes, read_s: float = 10) -> bytes:
    """Send ``request`` as it is and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_s) as sock:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def multipart(fields: dict[str, str], audio: bytes, boundary: str = "----flashcaption-test") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
                 + audio + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_the_official_client_transcribes_into_a_room_that_viewers_see(scripted):
    audio = speak("alpha bravo charlie", "delta echo", "foxtrot golf hotel")
    room = f"files-{uuid.uuid4().hex[:6]}"
    result = client(scripted.url).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(audio)), extra_query={"room": room})
    assert result.text == "alpha bravo charlie delta echo foxtrot golf hotel"
    assert result.usage is not None and result.usage.seconds == pytest.approx(len(audio) / SR, abs=0.01)
    assert [f["text"] for f in finals_of(scripted, room)] == ["alpha bravo charlie", "delta echo", "foxtrot golf hotel"]
    # And the same server still speaks WebSocket on the same port.
    messages, code = publish(scripted.url, speak("india"), f"room={room}")
    assert code == 1000 and [f["text"] for f in finals(messages)] == ["india"]


def test_a_raw_request_as_curl_sends_it_with_expect_100_continue(scripted):
    body, content_type = multipart({"model": "whisper-1", "response_format": "text"}, wav_bytes(speak("kilo lima")))
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", scripted.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")  # the body is asked for only once the head is accepted
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nkilo lima\n")


def test_a_chunked_body_and_a_stream_of_events(scripted):
    body, content_type = multipart({"model": "gpt-4o-transcribe", "stream": "true"}, wav_bytes(speak("mike", "november oscar")))
    chunks = b"".join(f"{len(body[i:i + 1000]):x}\r\n".encode() + body[i : i + 1000] + b"\r\n" for i in range(0, len(body), 1000))
    answer = raw(scripted, f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in answer
    events = [json.loads(line[6:]) for line in answer.split(b"\r\n") if line.startswith(b"data: ")]
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]
    assert events[-1]["text"] == "mike november oscar"
    # The official client reads the same stream.
    stream = client(scripted.url).audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav_bytes(speak("papa", "alpha"))), stream=True)
    assert [(e.type, getattr(e, "delta", None) or getattr(e, "text", None)) for e in stream] == [
        ("transcript.text.delta", "papa"), ("transcript.text.delta", " alpha"), ("transcript.text.done", "papa alpha")]


def test_every_format_openai_takes_is_decoded(scripted):
    audio = speak("alpha bravo", "charlie delta")
    transcribe = client(scripted.url).audio.transcriptions.create
    for name, data in (("a.flac", encoded(audio, "flac", "flac", 44100)), ("a.ogg", encoded(audio, "ogg", "libopus", 48000)),
                       ("a.webm", encoded(audio, "webm", "libopus", 48000)), ("a.wav", wav_bytes(audio[::2], rate=8000))):
        assert transcribe(model="whisper-1", file=(name, data)).text == "alpha bravo charlie delta", name


def test_what_the_server_will_not_take_is_refused_before_the_body_or_said_after(scripted, monkeypatch):
    transcribe = client(scripted.url).audio.transcriptions.create
    with pytest.raises(openai.BadRequestError, match="not audio this server reads"):
        transcribe(model="whisper-1", file=("a.wav", b"RIFF" + bytes(4000)))
    with pytest.raises(openai.BadRequestError, match="longer than this server takes"):
        transcribe(model="whisper-1", file=("a.wav", wav_bytes(np.zeros(61 * SR, np.float32))))
    with pytest.raises(openai.BadRequestError, match="does not support language 'de'"):
        transcribe(model="whisper-1", file=("a.wav", wav_bytes(speak("alpha"))), language="de")
    # Declared too large: 413 before a byte of the body is read (the client may still be sending).
    answer = raw(scripted, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=a\r\n"
                           b"Content-Length: 99999999\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Maximum content size limit (2000000)" in answer
    # Chunked past the limit: 413 as soon as it is passed.
    chunk = b"f4240\r\n" + bytes(1_000_000) + b"\r\n"
    answer = raw(scripted, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=a\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3)
    assert answer.startswith(b"HTTP/1.1 413 ")
    # Garbage, another path, a form without its file, not a form at all.
    assert raw(scripted, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab").startswith(b"HTTP/1.1 404 ")
    assert raw(scripted, b"POST /v1/audio/transcriptions HTTP/9.9\r\n\r\n").startswith(b"HTTP/1.1 ")
    body, content_type = multipart({"model": "whisper-1"}, b"")
    body = body.replace(b'name="file"', b'name="audio"')
    assert b"you must provide a file parameter" in raw(
        scripted, f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert b"multipart/form-data" in raw(scripted, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                                   b"Content-Length: 2\r\n\r\n{}")
    # A body that stops coming is given up on.
    monkeypatch.setattr(front, "BODY_IDLE_S", 0.5)
    answer = raw(scripted, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=a\r\n"
                           b"Content-Length: 1000\r\n\r\nabc")
    assert answer.startswith(b"HTTP/1.1 408 ")
    # None of it left a transcription's place taken.
    assert scripted.server.transcriptions == 0
    assert transcribe(model="whisper-1", file=("a.wav", wav_bytes(speak("echo")))).text == "echo"


def test_a_client_that_leaves_mid_stream_ends_its_session_and_frees_its_place(scripted):
    long_audio = speak(*["alpha bravo charlie delta"] * 12)
    room = f"left-{uuid.uuid4().hex[:6]}"
    body, content_type = multipart({"model": "gpt-4o-transcribe", "stream": "true"}, wav_bytes(long_audio))
    with socket.create_connection(("127.0.0.1", scripted.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions?room={room} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert b"transcript.text.delta" in sock.recv(65536) + sock.recv(65536)
    deadline = time.monotonic() + 10
    while (scripted.server.transcriptions or scripted.server.sessions.live) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scripted.server.transcriptions == 0 and not scripted.server.sessions.live
    # What was heard before it left is in the room, in order (the last utterance as far as it was fed).
    texts = [f["text"] for f in finals_of(scripted, room)]
    assert 0 < len(texts) < 12 and all(t == "alpha bravo charlie delta" for t in texts[:-1])
    assert "alpha bravo charlie delta".startswith(texts[-1])


def test_transcriptions_at_once_are_bounded(tmp_path):
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path, max_transcriptions=0), ScriptedModel())).start()
    try:
        with pytest.raises(openai.RateLimitError, match="as many files as it takes at once"):
            client(running.url).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(speak("alpha"))))
    finally:
        running.stop()


def test_a_bad_key_is_refused_before_the_body(guarded):  # noqa: F811
    with pytest.raises(openai.AuthenticationError):
        client(guarded.url, key="not-a-token").audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(speak("alpha"))))
    token = auth.create_token(guarded.secret, "hall", "publish", 60)
    with pytest.raises(openai.AuthenticationError):  # a token for another room
        client(guarded.url, key=token).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(speak("alpha"))))
    result = client(guarded.url, key=token).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(speak("alpha bravo"))), extra_query={"room": "hall"})
    assert result.text == "alpha bravo"


# -- the real model on real recordings -----------------------------------------------------------
@pytest.mark.parametrize("name", ["en_jfk_inaugural", "en_ls_1221-135766-0002f"])
def test_the_official_client_gets_the_native_protocol_s_finals_in_every_format(server, name):
    audio = np.concatenate([CLIPS[name].audio, np.zeros(SR, np.float32)])
    native, _ = publish(server.url, CLIPS[name].audio, f"room=native-{uuid.uuid4().hex[:6]}")
    expected = [f["text"] for f in finals(native)]
    assert expected
    transcribe = client(server.url).audio.transcriptions.create
    room = f"file-{uuid.uuid4().hex[:6]}"
    verbose = transcribe(model="whisper-1", file=("a.wav", wav_bytes(audio)), response_format="verbose_json",
                         timestamp_granularities=["word", "segment"], extra_query={"room": room})
    assert [s.text.strip() for s in verbose.segments] == expected
    assert verbose.text == " ".join(expected) and verbose.language == "english" and verbose.duration == pytest.approx(len(audio) / SR, abs=0.01)
    assert len(verbose.words) == sum(len(t.split()) for t in expected)
    assert [f["text"] for f in finals_of(server, room)] == expected  # the room's viewers saw the same
    wav = wav_bytes(audio)
    assert transcribe(model="gpt-4o-transcribe", file=("a.wav", wav), response_format="text") == " ".join(expected) + "\n"
    assert [c.content.replace("\n", " ") for c in srt.parse(transcribe(model="whisper-1", file=("a.wav", wav), response_format="srt"))] != []
    vtt = transcribe(model="whisper-1", file=("a.wav", wav), response_format="vtt")
    cues = " ".join(c.text.replace("\n", " ") for c in webvtt.from_buffer(io.StringIO(vtt)))
    assert cues == " ".join(expected)
    # A lossy copy (MP3, 44.1 kHz stereo) is captioned nearly alike.
    lossy = transcribe(model="whisper-1", file=("a.mp3", encoded(audio, "mp3", "libmp3lame", 44100))).text.lower().split()
    same = set(lossy) & set(" ".join(expected).lower().split())
    assert len(same) >= 0.8 * len(set(" ".join(expected).lower().split()))



# -- clients that misbehave, and a server that stops ---------------------------------------------
@pytest.fixture
def slow(tmp_path: Path) -> Iterator[ServerThread]:
    """Every decode takes 0.1 s longer: a transcription lasts long enough to be interrupted."""
    config = ServerConfig(port=0, data_dir=tmp_path, decode_delay_s=0.1, max_connections=4, shutdown_grace_s=5)
    running = ServerThread(CaptionServer(config, ScriptedModel())).start()
    yield running
    running.stop()


def test_a_client_that_leaves_before_its_answer_stops_the_work(slow):
    body, content_type = multipart({"model": "whisper-1"}, wav_bytes(speak(*["alpha bravo charlie"] * 30)))
    with socket.create_connection(("127.0.0.1", slow.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)
    started = time.monotonic()
    while (slow.server.transcriptions or slow.server.sessions.live) and time.monotonic() - started < 10:
        time.sleep(0.05)
    # Thirty utterances at 0.1 s a decode take over 3 s; the work stopped well before.
    assert slow.server.transcriptions == 0 and not slow.server.sessions.live and time.monotonic() - started < 2


def test_a_trickled_head_is_cut_off_and_every_connection_counts_against_the_cap(slow, monkeypatch):
    monkeypatch.setattr(front, "OPENING_TIMEOUT_S", 1.0)
    trickling = socket.create_connection(("127.0.0.1", slow.port), timeout=0.2)
    trickling.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\n")
    started, answer = time.monotonic(), b""
    while not answer and time.monotonic() - started < 5:
        trickling.sendall(b"X-Slow: 1\r\n")  # a header every 0.2 s: each read is quick, the head never ends
        with contextlib.suppress(TimeoutError):
            answer = trickling.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 2  # at the head's deadline, not never
    trickling.close()
    # Connections that have not said anything yet count: with the cap (4) taken, a request is refused.
    idle = [socket.create_connection(("127.0.0.1", slow.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert raw(slow, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        with pytest.raises(Exception, match="503"):
            with connect(f"{slow.url}/v1/captions?room=hall"):
                pass
    finally:
        for sock in idle:
            sock.close()


def test_bad_audio_and_duplicate_headers_are_bad_requests_not_errors(scripted):
    mp3 = bytearray(encoded(speak("alpha bravo", "charlie"), "mp3", "libmp3lame", 44100))
    rng = np.random.default_rng(7)
    for _ in range(6):  # damaged in the middle: decoded as far as it goes, or refused; never a 500
        damaged = bytearray(mp3)
        at = int(rng.integers(len(damaged) // 4, len(damaged)))
        damaged[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        body, content_type = multipart({"model": "whisper-1"}, bytes(damaged))
        answer = raw(scripted, f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert answer.split(b" ", 2)[1] in (b"200", b"400"), answer[:200]
    answer = raw(scripted, b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=a\r\n"
                           b"Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"more than once" in answer


def test_a_server_stopping_mid_transcription_answers_503(tmp_path):
    config = ServerConfig(port=0, data_dir=tmp_path, decode_delay_s=0.1, shutdown_grace_s=5)
    running = ServerThread(CaptionServer(config, ScriptedModel())).start()
    answers: list[BaseException | object] = []

    def transcribe() -> None:
        try:
            answers.append(client(running.url).audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav_bytes(speak(*["alpha bravo charlie"] * 30)))))
        except BaseException as error:  # noqa: BLE001 (what the client raised is the result)
            answers.append(error)

    worker = threading.Thread(target=transcribe)
    worker.start()
    deadline = time.monotonic() + 10
    while not running.server.sessions.live and time.monotonic() < deadline:
        time.sleep(0.02)
    running.stop()
    worker.join(30)
    (answer,) = answers
    assert isinstance(answer, openai.InternalServerError) and answer.status_code == 503 and "shutting down" in str(answer)
