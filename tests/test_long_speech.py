"""Nothing said is dropped: long, continuous, number-dense speech through a real server, on
both models, at real-time pace and as fast as a recording is sent. The speech is synthesized
(tests/data/README.md): 28 s with no pause long enough to end an utterance, so the utterance
is also cut at its maximum length once; digits that repeat ("627,000", "1,111") once stopped
the decode as a loop and lost the rest of the utterance. And real recordings joined without
pauses (as the bench's long-form section joins them): every recording's last words are in the
finals. A model that ends its text early is caught by the check of a final's tail."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest

from decoder.api import DecodeLimits, DecodeOptions, repetition_start
from streaming.config import ServerConfig
from streaming.evaluation.longform import boundary_losses, build_long_form
from streaming.evaluation.streams import load_manifest
from streaming.scoring import normalize, units
from streaming.server import CaptionServer
from tests.conftest import DATA, ServerThread, read_wav
from tests.scripted import ScriptedModel, script, speak
from tests.test_hardening import metric
from tests.test_server import finals, publish
from tests.test_whisper import whisper  # noqa: F401 (the fixture)

FIGURES = read_wav(DATA / "synth_figures_en.wav")
# Each sentence's last words (numbers as the captions write them, normalised as scoring does).
ENDINGS = ["more subscribers", "the margin was 38 5", "new customers", "not 10 000 but 100 000"]


def test_digits_that_repeat_are_a_number_not_a_loop() -> None:
    digits = frozenset({10, 11, 12})  # "0", "1", ","
    said = [5, 6, 11, 12, 10, 10, 10]  # "... 1,000"
    assert repetition_start(said) == 5  # without knowing digits: "000" looks like a loop
    assert repetition_start(said, numeric=digits) is None
    assert repetition_start([5, 11, 12, 10, 10, 10, 12, 10, 10, 10], numeric=digits) is None  # "1,000,000"
    assert repetition_start([5, *[10] * 10], numeric=digits) == 2  # a model looping on a digit is still stopped (at 10)
    assert repetition_start([5, 7, 7, 7], numeric=digits) == 2  # words are unchanged
    assert DecodeLimits(numeric_tokens=digits).loop_start(said) is None


def test_a_word_said_again_and_again_is_spared_while_audio_remains_but_a_wordless_loop_is_not() -> None:
    no, comma, four, dash = 20, 21, 22, 23
    said = [5, no, comma, no, comma, no, comma, no, comma]  # "... no, no, no, no,"
    assert repetition_start(said) is not None  # strictly: a loop (and the rest of the sentence was lost)
    spare = {"wordless": frozenset({comma, four, dash}), "word_times": 8}
    assert repetition_start(said, **spare) is None  # with audio still to read: speech
    assert repetition_start([5, *[no, comma] * 8], **spare) == 3  # a model stuck on it is still stopped
    assert repetition_start([5, four, dash, four, dash, four, dash], **spare) == 3  # "4-4-4-" on noise: never spared
    limits = DecodeLimits(wordless_tokens=frozenset({comma}))
    assert limits.loop_start(said, budget=100) is None  # 9 tokens where the audio allows 100: early
    assert limits.loop_start(said, budget=12) is not None  # the audio is read: strict


def _server(model, tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    running = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("long")), model)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def moonshine_server(model, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from _server(model, tmp_path_factory)


@pytest.fixture(scope="module")
def whisper_server(whisper, tmp_path_factory):  # type: ignore[no-untyped-def]  # noqa: F811
    yield from _server(whisper, tmp_path_factory)


def _check_every_ending(server: ServerThread, room: str, pace: float) -> None:
    messages, code = publish(server.url, FIGURES, f"room={room}&language=en", pace=pace)
    assert code == 1000
    said = normalize(" ".join(f["text"] for f in finals(messages)))
    text = " ".join(said)
    for ending in ENDINGS:
        assert text.count(ending) == 1, (ending, text)  # there, once: not lost, not doubled at a cut
    assert text.index("627 000 subscribers") < text.index("more subscribers") < text.index("new customers")


def _check_repeats(server: ServerThread) -> None:
    messages, code = publish(server.url, read_wav(DATA / "synth_repeats_en.wav"), "room=repeats&language=en")
    text = " ".join(normalize(" ".join(f["text"] for f in finals(messages))))
    assert code == 1000
    assert "no no no" in text and "tomorrow morning" in text, text
    assert "go go go" in text and "before the door" in text, text


def test_moonshine_goes_on_after_a_word_said_again_and_again(moonshine_server: ServerThread) -> None:
    _check_repeats(moonshine_server)


def test_whisper_goes_on_after_a_word_said_again_and_again(whisper_server: ServerThread) -> None:
    _check_repeats(whisper_server)


@pytest.mark.parametrize("pace", [0.0, 0.1], ids=["file", "real-time"])
def test_moonshine_captions_long_number_dense_speech_whole(moonshine_server: ServerThread, pace: float) -> None:
    _check_every_ending(moonshine_server, f"figures-moonshine-{int(pace * 10)}", pace)


@pytest.mark.parametrize("pace", [0.0, 0.1], ids=["file", "real-time"])
def test_whisper_captions_long_number_dense_speech_whole(whisper_server: ServerThread, pace: float) -> None:
    _check_every_ending(whisper_server, f"figures-whisper-{int(pace * 10)}", pace)


# The six English test recordings (35 s once their edge silences are trimmed), back to back, once.
JOINED = build_long_form(load_manifest(DATA / "manifest.tsv", {"en"}), minutes=0.55)


def _check_joined_recordings(server: ServerThread, room: str, pace: float) -> None:
    messages, code = publish(server.url, JOINED.audio, f"room={room}&language=en", pace=pace)
    assert code == 1000
    said = [units(f["text"], "en") for f in finals(messages)]
    heard = [w for words in said for w in words]
    at = 0
    for piece in JOINED.pieces:  # each recording's last two words, in order
        ending = JOINED.reference_units[piece.first_unit + piece.units - 2 : piece.first_unit + piece.units]
        found = next((i for i in range(at, len(heard) - 1) if heard[i : i + 2] == ending), None)
        assert found is not None, (piece.clip, ending, " ".join(heard[at:]))
        at = found + 2
    assert boundary_losses(JOINED.reference_units, said).lost == 0


@pytest.mark.parametrize("pace", [0.0, 0.1], ids=["file", "real-time"])
def test_moonshine_captions_every_recordings_last_words_when_they_run_on(moonshine_server: ServerThread, pace: float) -> None:
    _check_joined_recordings(moonshine_server, f"joined-moonshine-{int(pace * 10)}", pace)


@pytest.mark.parametrize("pace", [0.0, 0.1], ids=["file", "real-time"])
def test_whisper_captions_every_recordings_last_words_when_they_run_on(whisper_server: ServerThread, pace: float) -> None:
    # Sent as fast as it is decoded, "Ask what you can do for your country. It was the first
    # great sorrow of his life." has no partial before its final, and Whisper, given all 5.6 s,
    # reads only the second sentence: the check of the final's head finds the first.
    _check_joined_recordings(whisper_server, f"joined-whisper-{int(pace * 10)}", pace)


def test_words_a_model_drops_follow_its_final_and_are_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A model that stops after 22 words of a 12 s utterance, saying nothing of it (Whisper's way).
    server = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), ScriptedModel(stops_after=22))).start()
    try:
        long = script(30).split()
        messages, code = publish(server.url, speak(" ".join(long), "alpha bravo"), "room=r")
        assert code == 1000
        assert [f["text"] for f in finals(messages)] == [" ".join(long[:22]), " ".join(long[22:]), "alpha bravo"]
        assert metric(server, 'flashcaption_final_checks_total{check="tail_extended"}') >= 1
    finally:
        server.stop()


class _LoopingModel(ScriptedModel):
    """Hears the scripted words, and says its decode was stopped by the loop guard."""

    def decode(self, features, prefix=(), draft=(), options=DecodeOptions()):  # type: ignore[no-untyped-def]
        return replace(super().decode(features, prefix, draft, options), cut="loop")


def test_a_final_cut_short_is_counted_and_logged(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), _LoopingModel())).start()
    try:
        with caplog.at_level(logging.INFO, logger="streaming.server.publish"):
            messages, code = publish(server.url, speak("alpha bravo", "charlie"), "room=r")
        assert code == 1000 and [f["text"] for f in finals(messages)] == ["alpha bravo", "charlie"]
        counted = metric(server, 'flashcaption_final_decodes_cut_total{reason="loop"}')
        logged = sum("stopped short (loop)" in r.getMessage() for r in caplog.records)
        assert logged >= 2 and counted == logged  # one per final decode
    finally:
        server.stop()



class _DoubtingModel(ScriptedModel):
    """Hears the scripted words, but a guard against invented text drops those of long decodes."""

    def decode(self, features, prefix=(), draft=(), options=DecodeOptions()):  # type: ignore[no-untyped-def]
        heard = super().decode(features, prefix, draft, options)
        return replace(heard, words=(), rejected="unsure") if features.duration > 1.6 and not prefix else heard


def test_words_a_guard_drops_from_a_final_are_counted_and_logged(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server = ServerThread(CaptionServer(ServerConfig(port=0, data_dir=tmp_path), _DoubtingModel())).start()
    try:
        with caplog.at_level(logging.INFO, logger="streaming.server.publish"):
            messages, code = publish(server.url, speak("alpha bravo charlie delta echo", "foxtrot"), "room=r")
        assert code == 1000 and "foxtrot" in [f["text"] for f in finals(messages)]
        counted = metric(server, 'flashcaption_final_decodes_rejected_total{guard="unsure"}')
        logged = sum("not taken for speech (unsure)" in r.getMessage() for r in caplog.records)
        assert counted >= 1 and counted == logged
    finally:
        server.stop()
