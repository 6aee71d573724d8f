"""The sans-I/O session, driven by a real recording in 20 ms frames and the real model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from decoder.api import SAMPLE_RATE, Hypothesis, Word, join_words, transcribe
from streaming.nonspeech import brown_noise, pink_noise
from streaming.scoring import error_rate
from streaming.session import DecodeRequest, FinalCaption, PartialCaption, Session, SessionConfig, _without_reread
from tests.conftest import CLIPS, ENGLISH, NON_SPEECH
from vad.segmenter import VadConfig

FRAME = SAMPLE_RATE // 50


def run(session: Session, audio: np.ndarray, model, frame: int = FRAME, decode_every: int = 1, decode=None) -> list:
    """Feed audio frame by frame; decode whatever the session asks for right away (with the
    model, or with ``decode(request)`` when given)."""
    events, requests = [], []
    decode = decode or (lambda request: transcribe(model, request.audio, request.prefix, request.draft, request.options))

    def drain() -> None:
        while (request := session.next_request()) is not None:
            requests.append(request)
            session.receive_hypothesis(request.id, decode(request), 0.05)
            events.extend(session.events())
        events.extend(session.events())  # audio alone can complete a final (decoded early)

    for index, offset in enumerate(range(0, len(audio), frame)):
        session.receive_audio(audio[offset : offset + frame])
        if index % decode_every == 0:
            drain()
    session.end()
    drain()
    assert session.finished
    run.requests = requests
    return events


def with_silence(audio: np.ndarray, before: float = 0.5, after: float = 1.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(before * SAMPLE_RATE), np.float32), audio, np.zeros(int(after * SAMPLE_RATE), np.float32)])


def test_partials_then_a_final_with_growing_stable_prefix(model):
    clip = CLIPS["en_ls_1995-1837-0001"]
    events = run(Session(), with_silence(clip.audio), model)
    partials = [e for e in events if isinstance(e, PartialCaption)]
    finals = [e for e in events if isinstance(e, FinalCaption)]
    assert len(partials) >= 10 and finals
    assert isinstance(events[0], PartialCaption) and isinstance(events[-1], FinalCaption)
    by_segment: dict[int, list[PartialCaption]] = {}
    for p in partials:
        by_segment.setdefault(p.segment, []).append(p)
    for segment, shown in by_segment.items():
        for before, after in zip(shown, shown[1:]):
            # What was shown as stable never changes and never shrinks.
            assert after.stable >= before.stable
            assert after.text[: before.stable] == before.text[: before.stable]
            assert 0 <= after.stable <= len(after.text)
        assert any(f.segment == segment for f in finals)
    assert [f.segment for f in finals] == sorted({f.segment for f in finals}) == list(range(len(finals)))
    assert error_rate([(clip.reference, " ".join(f.text for f in finals))]) < 0.1


def test_times_are_on_the_session_audio_clock(model):
    clip = CLIPS["en_arctic_a0024"]
    lead = 2.0
    events = run(Session(), with_silence(clip.audio, before=lead), model)
    final = [e for e in events if isinstance(e, FinalCaption)][0]
    assert lead - 0.5 <= final.start <= lead
    assert lead + len(clip.audio) / SAMPLE_RATE - 0.6 <= final.end <= lead + len(clip.audio) / SAMPLE_RATE + 0.3
    partial = [e for e in events if isinstance(e, PartialCaption)][-1]
    assert partial.start == final.start and partial.end <= final.end + 0.6


def test_partials_reuse_the_confirmed_prefix_and_finals_verify_the_draft(model):
    clip = CLIPS["en_ls_1995-1837-0001"]
    finals = [e for e in run(Session(), with_silence(clip.audio), model) if isinstance(e, FinalCaption)]
    requests: list[DecodeRequest] = run.requests
    keys = sorted({r.segment_key for r in requests})
    assert len(keys) == len(finals)  # every utterance was captioned: keys and segments pair up
    longest = 0
    for key, caption in zip(keys, finals):
        partials = [r for r in requests if r.segment_key == key and not r.urgent]
        prefixes = [len(r.prefix) - r.context_words for r in partials]
        assert prefixes == sorted(prefixes)  # the forced prefix only grows within an utterance
        longest = max(longest, prefixes[-1])
        # The final: decoded after the end, or early (in the pause that ended the utterance),
        # where the utterance did end. (A check of its tail may follow it.)
        final = [r for r in requests if r.segment_key == key and r.urgent and r.check is None][-1]
        assert final.final or final.early_end / SAMPLE_RATE == pytest.approx(caption.end)
        # The final drafts the latest partial, confirmed words first...
        assert final.draft[: prefixes[-1]] == partials[-1].prefix[partials[-1].context_words :]
        # ...and the draft changes nothing but the cost: the words are plain greedy decoding's.
        with_draft = transcribe(model, final.audio, final.prefix, final.draft)
        without = transcribe(model, final.audio, final.prefix)
        assert with_draft.words == without.words
    assert longest >= 10


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
@pytest.mark.parametrize("name", sorted(NON_SPEECH))
def test_no_caption_at_all_for_non_speech(model, name, detector):
    assert run(Session(SessionConfig(vad=VadConfig(detector=detector))), NON_SPEECH[name](), model) == []


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
def test_no_caption_when_noise_starts_mid_stream(model, detector):
    audio = np.concatenate([pink_noise(5, level=0.003, seed=5), brown_noise(15, level=0.5, seed=6)])
    assert run(Session(SessionConfig(vad=VadConfig(detector=detector))), audio, model) == []


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
@pytest.mark.parametrize("clip_id", ["en_ls_1995-1837-0001", "en_fleurs_test_004", "en_arctic_a0024"])
def test_an_utterance_in_steady_noise_is_captioned_whole(model, clip_id, detector):
    # Pink noise 5 dB below the speech, from 2 s before it to 3 s after: the captions begin
    # with the first word, and hold no more errors than the model makes on the same noisy
    # audio decoded whole (the pipeline in front of it loses nothing the model would hear).
    from streaming.scoring import error_counts, normalize
    from tests.test_vad import noisy

    audio, _ = noisy(clip_id, "pink", 5)
    session = Session(SessionConfig(vad=VadConfig(detector=detector)))
    captions = " ".join(e.text for e in run(session, audio, model) if isinstance(e, FinalCaption))
    reference = CLIPS[clip_id].reference
    streamed, _ = error_counts(reference, captions)
    offline, _ = error_counts(reference, transcribe(model, audio).text)
    assert normalize(captions)[:1] == normalize(reference)[:1], captions
    assert streamed <= offline + 1, (captions, streamed, offline)


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
@pytest.mark.parametrize("name", ["pink_noise", "brown_noise", "music"])
def test_no_caption_from_a_long_background_between_utterances(model, name, detector):
    # 20 s of noise or music between two sentences, as loud as the speech: captions for the
    # sentences, none from the stretch between them.
    first, second = CLIPS["en_arctic_a0024"].audio, CLIPS["en_librivox_sns01_0880"].audio
    background = NON_SPEECH[name]()[: 20 * SAMPLE_RATE]
    background *= np.sqrt(np.mean(first**2) / np.mean(background**2))
    audio = with_silence(np.concatenate([first, background, second]))
    gap = (0.5 + len(first) / SAMPLE_RATE + 0.5, 0.5 + (len(first) + len(background)) / SAMPLE_RATE - 0.5)
    session = Session(SessionConfig(vad=VadConfig(detector=detector)))
    finals = [e for e in run(session, audio, model) if isinstance(e, FinalCaption) and e.text]
    assert not [f for f in finals if gap[0] <= f.start and f.end <= gap[1]], finals
    from streaming.scoring import normalize

    heard = set(normalize(" ".join(f.text for f in finals)))
    for clip in ("en_arctic_a0024", "en_librivox_sns01_0880"):  # both sentences are there
        said = normalize(CLIPS[clip].reference)
        assert sum(w in heard for w in said) >= 0.7 * len(said), (clip, finals)


def test_flush_finalises_at_once_and_end_finalises_everything(model):
    clip = CLIPS["en_jfk_inaugural"]
    session = Session()
    session.receive_audio(clip.audio[: 2 * SAMPLE_RATE])  # "And so my fellow Americans" is under way
    session.flush()
    request = session.next_request()
    assert request is not None and request.final
    session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
    (final,) = session.events()
    assert isinstance(final, FinalCaption) and "fellow" in final.text.lower()
    events = run(session, clip.audio[2 * SAMPLE_RATE :], model)
    finals = [e for e in events if isinstance(e, FinalCaption)]
    assert finals and finals[0].segment == 1 and "country" in finals[-1].text.lower()


def test_a_failed_final_decode_still_sends_what_the_last_partial_showed(model):
    session = Session()
    audio = CLIPS["en_ls_1995-1837-0001"].audio
    shown = []
    for offset in range(0, 4 * SAMPLE_RATE, FRAME):
        session.receive_audio(audio[offset : offset + FRAME])
        while (request := session.next_request()) is not None:
            session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
            shown += session.events()
    session.end()
    request = session.next_request()
    assert request.final
    session.receive_failure(request.id)
    (final,) = session.events()
    last = shown[-1]
    assert isinstance(final, FinalCaption) and final.text == last.text != ""


def test_streaming_accuracy_close_to_offline(model):
    """Streaming with partials costs little accuracy against decoding each whole clip."""
    offline = [(c.reference, transcribe(model, c.audio).text) for c in ENGLISH]
    streamed = []
    for clip in ENGLISH:
        events = run(Session(), with_silence(clip.audio), model)
        streamed.append((clip.reference, " ".join(e.text for e in events if isinstance(e, FinalCaption))))
    offline_wer, streaming_wer = error_rate(offline), error_rate(streamed)
    print(f"WER offline {offline_wer:.3f} streaming {streaming_wer:.3f}")
    assert streaming_wer <= offline_wer * 1.10 + 0.01


def test_an_utterance_after_a_pause_is_decoded_with_the_previous_one_in_front(model):
    # JFK pauses after "And so my fellow Americans": the next utterance is decoded behind it.
    clip = CLIPS["en_jfk_inaugural"]
    events = run(Session(), with_silence(clip.audio), model)
    requests = run.requests
    assert any(r.context_words for r in requests)
    finals = [e for e in events if isinstance(e, FinalCaption)]
    keys = sorted({r.segment_key for r in requests})
    assert len(keys) == len(finals)  # every utterance was captioned: keys and segments pair up
    for index, (key, caption) in enumerate(zip(keys, finals)):
        for request in [r for r in requests if r.segment_key == key and r.context_words]:
            # The lead-in is the previous utterance: its final's words are forced first...
            assert index > 0 and join_words(request.prefix[: request.context_words]).strip() == finals[index - 1].text
        final = [r for r in requests if r.segment_key == key and r.urgent and r.check is None][-1]
        if final.context_words:
            # ...and its audio goes in front of the utterance's own.
            lengths = [(f.end - f.start) * SAMPLE_RATE for f in (finals[index - 1], caption)]
            assert len(final.audio) == pytest.approx(sum(lengths), abs=2)
    # The lead-in is context, never caption: no later segment shows the first one's words again.
    first = [e for e in events if isinstance(e, FinalCaption)][0]
    assert "fellow" in first.text
    assert not any("fellow" in e.text for e in events if e.segment > first.segment)


def test_a_sentence_that_starts_like_the_previous_one_keeps_its_words(model):
    # "It was the first great sorrow of his life. | It was not so much the loss..."
    clip = CLIPS["en_ls_1995-1837-0001"]
    finals = [e for e in run(Session(), with_silence(clip.audio), model) if isinstance(e, FinalCaption)]
    assert len(finals) == 2 and finals[1].text.startswith("It was not")


def test_partials_hold_back_the_word_at_the_edge_while_speech_goes_on(model):
    clip = CLIPS["en_ls_1995-1837-0001"]
    session = Session()
    shown, hypotheses = [], []
    for offset in range(0, int(2.2 * SAMPLE_RATE), FRAME):  # speech all the way: never settled
        session.receive_audio(clip.audio[offset : offset + FRAME])
        while (request := session.next_request()) is not None:
            hypothesis = transcribe(model, request.audio, request.prefix, request.draft, request.options)
            session.receive_hypothesis(request.id, hypothesis)
            hypotheses.append(hypothesis.text)
            shown += session.events()
    assert shown and all(isinstance(e, PartialCaption) for e in shown)
    for event in shown:
        assert any(h.startswith(event.text) and len(h) > len(event.text) for h in hypotheses)
    texts = [e.text for e in shown]
    assert len(texts) == len(set(texts))  # a partial that changes nothing is not sent


def test_the_final_is_decoded_in_the_pause_and_sent_when_the_silence_confirms_it(model):
    vad = SessionConfig().vad
    session = Session()
    audio = with_silence(CLIPS["en_librivox_sns01_0880"].audio, after=1.0)
    early, final_at, events = None, None, []
    for offset in range(0, len(audio), FRAME):
        session.receive_audio(audio[offset : offset + FRAME])
        events += session.events()
        if final_at is None and any(isinstance(e, FinalCaption) for e in events):
            final_at = session.received_seconds
        while (request := session.next_request()) is not None:
            assert not request.final  # the end is never waited for: its final is decoded already
            if request.early_end is not None:
                early = (request, session.received_seconds)
            session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
            events += session.events()
    request, asked_at = early
    (final,) = [e for e in events if isinstance(e, FinalCaption)]
    end = request.early_end / SAMPLE_RATE
    assert final.end == pytest.approx(end)
    # Asked as soon as all its audio was in (tail_ms into the pause); sent, with no decode
    # after the audio, when the pause reached end_silence_ms.
    assert asked_at == pytest.approx(end, abs=0.021)
    assert final_at == pytest.approx(end + (vad.end_silence_ms - vad.tail_ms) / 1000, abs=0.021)
    # Meanwhile it was shown as a partial: the screen read the final before it was final.
    last_partial = [e for e in events if isinstance(e, PartialCaption)][-1]
    assert last_partial.text == final.text != ""


def test_an_early_final_that_corrects_a_stable_word_is_not_shown_as_a_partial(model):
    # The partials settle on "think about the mess dinosaurs"; the whole utterance reads
    # "think about them as dinosaurs". Stable text never changes in partials: only the final
    # may correct it.
    events = run(Session(), with_silence(CLIPS["en_fleurs_test_004"].audio, after=1.0), model)
    partials = [e for e in events if isinstance(e, PartialCaption)]
    (final,) = [e for e in events if isinstance(e, FinalCaption)]
    assert "them as dinosaurs" in final.text and not final.text.startswith(partials[-1].text[: partials[-1].stable])
    for before, after in zip(partials, partials[1:]):
        assert after.text.startswith(before.text[: before.stable])


def test_an_early_final_is_dropped_when_the_speaker_goes_on(model):
    # JFK pauses after "Americans" and "for you"; with a long end silence they do not end it.
    session = Session(SessionConfig(vad=VadConfig(end_silence_ms=3000)))
    events = run(session, with_silence(CLIPS["en_jfk_inaugural"].audio), model)
    earlies = [r for r in run.requests if r.early_end is not None]
    assert len(earlies) >= 2  # one per pause
    (final,) = [e for e in events if isinstance(e, FinalCaption)]
    assert "fellow" in final.text and "country" in final.text
    assert final.end * SAMPLE_RATE == earlies[-1].early_end  # only the last pause's guess held


def test_a_final_that_hears_only_the_lead_in_is_decoded_again_without_it(model):
    # Whisper may close the lead-in's sentence and stop; the new words must not be lost.
    clip = CLIPS["en_jfk_inaugural"]
    session = Session()
    audio = with_silence(clip.audio)
    answered_lead_only = None
    for offset in range(0, len(audio), FRAME):
        session.receive_audio(audio[offset : offset + FRAME])
        while (request := session.next_request()) is not None:
            if answered_lead_only is None and request.urgent and request.context_words:
                answered_lead_only = request
                lead = request.prefix[: request.context_words]
                session.receive_hypothesis(request.id, Hypothesis(words=lead))
                again = session.next_request()
                assert again.segment_key == request.segment_key and again.urgent and again.context_words == 0
                request = again
            session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
    session.end()
    while (request := session.next_request()) is not None:
        session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
    assert answered_lead_only is not None
    finals = [e.text for e in session.events() if isinstance(e, FinalCaption)]
    assert len(finals) >= 2 and all(finals)


def test_a_reread_of_the_lead_in_is_dropped_wherever_it_starts():
    def words(text: str) -> tuple[Word, ...]:
        # Punctuation after a forced prefix comes as a word of its own: "," here.
        return tuple(Word(w if w == "," else " " + w, ()) for w in text.split())

    def new_text(lead: str, heard: str) -> str:
        return join_words(_without_reread(words(lead), words(heard))).strip()

    jfk = "And so my fellow Americans."
    assert new_text(jfk, "and so my fellow America") == ""  # the lead-in read again, cut short
    assert new_text(jfk, ", And so my fellow Americans ask not") == "ask not"
    # Seen with whisper-base int8: the new words, then the lead-in again and the new words again.
    assert new_text(jfk, "Ask not. And so my fellow Americans ask") == "Ask not."
    assert new_text(jfk, "Ask not , and so my fellow Amer") == "Ask not,"
    # Kept: a sentence that starts like the last one, a phrase that repeats part of it, and a
    # short lead-in repeated inside new words (too short to tell a re-read from speech).
    sorrow = "It was the first great sorrow of his life."
    assert new_text(sorrow, "It was not so much") == "It was not so much"
    assert new_text(jfk, "my fellow citizens of the world") == "my fellow citizens of the world"
    assert new_text(jfk, "Yes, and so my f b") == "Yes, and so my f b"  # "f" ends no audio: not "fellow" cut short
    assert new_text("Ask not.", "What your country can do for you, ask not") == "What your country can do for you, ask not"


def test_an_early_final_fixes_the_language_only_if_it_becomes_the_final(model):
    # A multilingual model's detection on the first second or two is a guess (Whisper once took
    # French for English at a pause after one word, then translated the whole sentence). The
    # detected language is the model's output; here it is set per request: "de" for the chosen
    # early finals, "en" for every other decode.
    def finals_of(session: Session, audio: np.ndarray, german) -> list[FinalCaption]:
        earlies = 0

        def decode(request: DecodeRequest) -> Hypothesis:
            nonlocal earlies
            heard = transcribe(model, request.audio, request.prefix, request.draft, request.options)
            if request.early_end is None:
                return replace(heard, language="en")
            earlies += 1
            return replace(heard, language="de" if german(earlies) else "en")

        return [e for e in run(session, audio, model, decode=decode) if isinstance(e, FinalCaption)]

    audio = with_silence(CLIPS["en_jfk_inaugural"].audio)
    partials_never_fix = SessionConfig(language_lock_s=60.0)
    # JFK's pauses do not end the utterance: the first early final ("And so my fellow
    # Americans", taken for German) is dropped when he goes on, and fixes nothing.
    config = replace(partials_never_fix, vad=VadConfig(end_silence_ms=3000))
    (final,) = finals_of(Session(config, language="auto"), audio, german=lambda n: n == 1)
    assert final.language == "en"
    # With the usual end silence the early finals become the finals, language and all.
    finals = finals_of(Session(partials_never_fix, language="auto"), audio, german=lambda n: True)
    assert len(finals) >= 2 and {f.language for f in finals} == {"de"}
