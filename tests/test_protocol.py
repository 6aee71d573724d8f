"""Wire protocol v1 parsing: every bad input gets a clear, coded error."""

from __future__ import annotations

import json

import pytest

from decoder.context import Context, Term
from streaming import protocol
from streaming.protocol import ConfigMessage, EndMessage, FlushMessage, ProtocolError


def test_publish_defaults():
    params = protocol.parse_publish({})
    assert (params.room, params.sample_rate, params.encoding, params.language) == ("default", 16000, "pcm_s16le", None)


def test_publish_all_fields():
    params = protocol.parse_publish(
        {"room": "keynote-1", "speaker": "Ada", "language": "en", "sample_rate": "48000", "encoding": "pcm_f32le", "context": "Qwen3-ASR", "token": "t"}
    )
    assert params.bytes_per_second == 48000 * 4 and params.context == Context("Qwen3-ASR", (Term("Qwen3-ASR"),))


@pytest.mark.parametrize(
    "query, code, words",
    [
        ({"room": "a b"}, "bad_request", "room"),
        ({"room": "x" * 65}, "bad_request", "room"),
        ({"room": ""}, "bad_request", "room"),
        ({"sample_rate": "44.1k"}, "bad_request", "sample_rate"),
        ({"sample_rate": "96000"}, "bad_request", "8000-48000"),
        ({"sample_rate": "4000"}, "bad_request", "8000-48000"),
        ({"encoding": "mp3"}, "bad_request", "encoding"),
        ({"language": "English!"}, "bad_request", "language"),
        ({"speaker": "a\nb"}, "bad_request", "speaker"),
        ({"context": "x" * 5000}, "too_large", "context"),
        ({"bogus": "1"}, "bad_request", "bogus"),
    ],
)
def test_publish_errors(query, code, words):
    with pytest.raises(ProtocolError) as raised:
        protocol.parse_publish(query)
    assert raised.value.code == code and words in raised.value.message


def test_repeated_parameter_is_an_error():
    with pytest.raises(ProtocolError, match="more than once"):
        protocol.split_path("/v1/publish?room=a&room=b")


def test_view_params():
    assert protocol.parse_view({"room": "r", "since": "12"}).since == 12
    for since in ("-1", "x"):
        with pytest.raises(ProtocolError):
            protocol.parse_view({"since": since})


def test_client_messages():
    assert protocol.parse_client_message('{"type":"flush"}') == FlushMessage()
    assert protocol.parse_client_message('{"type":"end"}') == EndMessage()
    configured = protocol.parse_client_message('{"type":"config","language":"en","context":"Hester Prynne"}')
    assert configured == ConfigMessage("en", Context("Hester Prynne", (Term("Hester Prynne"),)))
    terms = {"type": "config", "context": {"terms": [{"text": "Qwen3-ASR", "boost": 2.0}, "Hester Prynne"]}}
    assert protocol.parse_client_message(json.dumps(terms)).context.terms == (Term("Qwen3-ASR", 2.0), Term("Hester Prynne"))


@pytest.mark.parametrize(
    "text, code",
    [
        ("{not json", "bad_request"),
        ("[1,2]", "bad_request"),
        ('{"kind":"flush"}', "bad_request"),
        ('{"type":"dance"}', "bad_request"),
        ('{"type":"config","volume":3}', "bad_request"),
        ('{"type":"config","context":7}', "bad_request"),
        ('{"type":"config","context":"' + "x" * 70000 + '"}', "too_large"),
    ],
)
def test_bad_client_messages(text, code):
    with pytest.raises(ProtocolError) as raised:
        protocol.parse_client_message(text)
    assert raised.value.code == code


def test_close_codes():
    assert {c: ProtocolError(c, "").close_code for c in protocol.CLOSE_CODES} == {
        "bad_request": 1008, "unauthorized": 1008, "too_large": 1009, "overloaded": 1013, "internal": 1011,
    }
