"""The sans-I/O session's promises, checked with the scripted model (tests/scripted.py): every
utterance gets exactly one final, in order, with its words, whatever the frame size, the decode
latency, a flush, the end, the length cap, an early final or a failed decode; stable text
never changes; finals ask for the beam, partials decode greedily. Real VAD, no real model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from decoder.api import SAMPLE_RATE, DecodeOptions, Hypothesis, Word, transcribe
from streaming.session import CaptionEvent, DecodeRequest, FinalCaption, PartialCaption, Session, SessionConfig
from streaming.stabilizer import Stabilizer
from tests.conftest import NON_SPEECH
from tests.scripted import GAP_S, WORD_S, ScriptedModel, script, silence, speak, utterance, word
from vad.segmenter import VadConfig

FRAME = SAMPLE_RATE // 50
# Four utterances a second apart (so each is decoded behind the one before), no word repeated.
TEXTS = ("alpha bravo charlie", "delta echo foxtrot golf", "hotel india", "juliett kilo lima mike november")


@dataclass
class Run:
    events: list[CaptionEvent] = field(default_factory=list)
    requests: list[DecodeRequest] = field(default_factory=list)
    failed: list[DecodeRequest] = field(default_factory=list)

    @property
    def finals(self) -> list[FinalCaption]:
        return [e for e in self.events if isinstance(e, FinalCaption)]

    @property
    def partials(self) -> list[PartialCaption]:
        return [e for e in self.events if isinstance(e, PartialCaption)]


def drive(
    session: Session,
    audio: np.ndarray,
    model: ScriptedModel,
    frame: int = FRAME,
    lag: int = 0,
    fail: Callable[[DecodeRequest], bool] = lambda request: False,
    end: bool = True,
    run: Run | None = None,
) -> Run:
    """Feed ``audio`` frame by frame. Each decode request is answered ``lag`` frames after it
    was asked (a decode that takes that long), by the model, or as a failure when ``fail``
    says so or the model raises; then ``end()`` and everything left is answered."""
    run = run or Run()
    pending: deque[tuple[DecodeRequest, int]] = deque()

    def answer(request: DecodeRequest) -> None:
        try:
            if fail(request):
                raise RuntimeError("decode failed")
            hypothesis = transcribe(model, request.audio, request.prefix, request.draft, request.options)
        except RuntimeError:  # as the engine reports a model's exception
            run.failed.append(request)
            session.receive_failure(request.id)
        else:
            session.receive_hypothesis(request.id, hypothesis, 0.01)

    def step(index: int | None) -> None:
        while True:
            if pending and (index is None or pending[0][1] <= index):
                answer(pending.popleft()[0])
            if pending:
                break
            request = session.next_request()
            if request is None:
                break
            run.requests.append(request)
            pending.append((request, (index or 0) + lag))
            if lag and index is not None:
                break
        run.events.extend(session.events())

    for index, offset in enumerate(range(0, len(audio), frame)):
        session.receive_audio(audio[offset : offset + frame])
        step(index)
    if end:
        session.end()
        step(None)
        assert session.finished
    return run


def texts(finals: list[FinalCaption]) -> list[str]:
    return [f.text for f in finals]


def check_one_final_per_utterance(run: Run, expected: list[str] | tuple[str, ...], first_segment: int = 0) -> None:
    """Exactly one final per utterance, in order, with its words; no partial after its final."""
    assert texts(run.finals) == list(expected)
    assert [f.segment for f in run.finals] == list(range(first_segment, first_segment + len(expected)))
    finalised: set[int] = set()
    for event in run.events:
        assert event.segment not in finalised, f"{event} after the final of its segment"
        if isinstance(event, FinalCaption):
            finalised.add(event.segment)
            assert event.start < event.end
    starts = [f.start for f in run.finals]
    assert starts == sorted(starts)


# -- finals: one per utterance, never dropped --------------------------------------------------
@pytest.mark.parametrize("frame, lag", [(160, 0), (FRAME, 3), (FRAME, 40), (1600, 40), (SAMPLE_RATE, 0)])
def test_every_utterance_gets_exactly_one_final_with_its_words(frame: int, lag: int) -> None:
    # lag 40 at 20 ms frames: decodes take 0.8 s, so finals are decoded while the next
    # utterance has begun, and partials come back for utterances that have ended meanwhile.
    run = drive(Session(), speak(*TEXTS), ScriptedModel(), frame=frame, lag=lag)
    check_one_final_per_utterance(run, TEXTS)


def test_utterances_far_apart_are_decoded_alone_and_close_ones_behind_the_previous() -> None:
    far = drive(Session(), speak(*TEXTS, pause_s=3.0), ScriptedModel())
    check_one_final_per_utterance(far, TEXTS)
    assert not any(r.context_words for r in far.requests)
    close = drive(Session(), speak(*TEXTS), ScriptedModel())
    behind = [r for r in close.requests if r.context_words]
    assert behind and all(len(r.prefix) >= r.context_words for r in behind)
    # The previous utterance's words are forced first, and never shown again.
    assert {tuple(w.text.strip() for w in r.prefix[: r.context_words]) for r in behind} <= {tuple(t.split()) for t in TEXTS}


def test_flush_finalises_the_words_so_far_and_the_rest_follows() -> None:
    audio = speak("alpha bravo charlie delta echo foxtrot")
    in_the_gap = int((0.5 + 3 * (WORD_S + GAP_S) - GAP_S / 2) * SAMPLE_RATE)  # after "charlie"
    session, model = Session(), ScriptedModel()
    run = drive(session, audio[:in_the_gap], model, end=False)
    assert run.finals == []
    session.flush()
    request = session.next_request()
    assert request is not None and request.final  # the flushed utterance is decoded at once
    session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
    (final,) = [e for e in session.events() if isinstance(e, FinalCaption)]
    assert final.text == "alpha bravo charlie" and final.end == pytest.approx(in_the_gap / SAMPLE_RATE)
    run = drive(session, audio[in_the_gap:], model)
    check_one_final_per_utterance(run, ["delta echo foxtrot"], first_segment=1)


def test_end_finalises_the_utterance_in_progress() -> None:
    audio = speak("alpha bravo charlie delta")
    mid_word = int((0.5 + 2 * (WORD_S + GAP_S) + 0.2) * SAMPLE_RATE)  # 0.2 s into "charlie"
    run = drive(Session(), audio[:mid_word], ScriptedModel())
    check_one_final_per_utterance(run, ["alpha bravo charlie"])


def test_discard_drops_the_utterance_in_progress_and_withdraws_what_it_showed() -> None:
    audio = speak("alpha bravo charlie delta", "echo foxtrot")
    mid_word = int((0.5 + 2 * (WORD_S + GAP_S) + 0.2) * SAMPLE_RATE)  # 0.2 s into "charlie"
    session, model = Session(), ScriptedModel()
    run = drive(session, audio[:mid_word], model, end=False)
    assert run.partials and not run.finals  # the utterance was shown
    in_flight = None
    while in_flight is None:  # and a decode of it is under way
        session.receive_audio(audio[mid_word : mid_word + FRAME])
        mid_word += FRAME
        in_flight = session.next_request()
    session.discard()
    (withdrawal,) = session.events()
    assert isinstance(withdrawal, FinalCaption) and withdrawal.text == "" and withdrawal.segment == run.partials[-1].segment
    session.receive_hypothesis(in_flight.id, transcribe(model, in_flight.audio, in_flight.prefix, in_flight.draft, in_flight.options))
    assert session.events() == []  # its answer is ignored: the utterance is gone
    # What follows is captioned as usual (the rest of the cleared utterance's words included:
    # they were spoken after the clear).
    rest = drive(session, audio[mid_word:], model)
    assert texts(rest.finals)[-1] == "echo foxtrot" and "alpha" not in " ".join(texts(rest.finals))
    assert all(f.segment > withdrawal.segment for f in rest.finals)
    # Nothing open: nothing to drop.
    idle = Session()
    idle.discard()
    assert idle.events() == [] and idle.idle


def test_a_session_without_partials_decodes_finals_only() -> None:
    run = drive(Session(partials=False), speak(*TEXTS), ScriptedModel())
    check_one_final_per_utterance(run, TEXTS)
    assert not run.partials and all(r.urgent for r in run.requests)


def test_the_length_cap_cuts_between_words_and_loses_none() -> None:
    long = script(40)  # 16 s of speech without a pause
    config = SessionConfig(vad=VadConfig(max_utterance_s=6.0))
    run = drive(Session(config), speak(long), ScriptedModel(), lag=5)
    assert len(run.finals) >= 3
    assert " ".join(texts(run.finals)) == long  # every word once, in order
    assert all(f.end - f.start <= 6.0 + 0.02 for f in run.finals)
    check_one_final_per_utterance(run, texts(run.finals))


def test_the_final_is_decoded_in_the_pause_and_sent_without_another_decode() -> None:
    vad = VadConfig()
    session, model = Session(SessionConfig(vad=vad)), ScriptedModel()
    audio = speak("alpha bravo charlie")
    run, final_at = Run(), None
    for offset in range(0, len(audio), FRAME):
        drive(session, audio[offset : offset + FRAME], model, end=False, run=run)
        if final_at is None and run.finals:
            final_at = session.received_seconds
    assert not any(r.final for r in run.requests)  # the end was never waited for
    (early,) = [r for r in run.requests if r.early_end is not None]
    (final,) = run.finals
    assert final.text == "alpha bravo charlie" and final.end == pytest.approx(early.early_end / SAMPLE_RATE)
    assert final_at == pytest.approx(final.end + (vad.end_silence_ms - vad.tail_ms) / 1000, abs=0.021)


def test_a_pause_shorter_than_the_end_silence_keeps_one_utterance_and_all_its_words() -> None:
    # Each pause asks for an early final; the speaker goes on, so only the last one holds.
    config = SessionConfig(vad=VadConfig(end_silence_ms=1500))
    audio = np.concatenate([silence(0.5), utterance("alpha bravo"), silence(0.8), utterance("charlie delta"), silence(0.8),
                            utterance("echo"), silence(2.0)])
    run = drive(Session(config), audio, ScriptedModel())
    earlies = [r for r in run.requests if r.early_end is not None]
    assert len(earlies) >= 3
    (final,) = run.finals
    assert final.text == "alpha bravo charlie delta echo"
    assert final.end * SAMPLE_RATE == pytest.approx(earlies[-1].early_end)


# -- failed decodes ------------------------------------------------------------------------
def test_a_failed_final_decode_still_sends_what_the_partials_showed() -> None:
    run = drive(Session(), speak(*TEXTS), ScriptedModel(), fail=lambda r: r.urgent)
    assert run.failed and all(r.urgent for r in run.failed)
    check_one_final_per_utterance(run, TEXTS)
    for final in run.finals:
        last = [p for p in run.partials if p.segment == final.segment][-1]
        assert final.text == last.text


def test_a_failed_early_final_is_decoded_again_as_the_final() -> None:
    run = drive(Session(), speak(*TEXTS), ScriptedModel(), fail=lambda r: r.early_end is not None)
    assert len(run.failed) >= len(TEXTS)
    check_one_final_per_utterance(run, TEXTS)
    assert sum(r.final for r in run.requests) >= len(TEXTS)


def test_an_utterance_whose_every_decode_fails_shows_nothing_and_stops_nothing() -> None:
    # Nothing was shown, so there is nothing to finalise; the utterances after it go on.
    model = ScriptedModel(fails=lambda heard: "delta" in heard)
    run = drive(Session(), speak(*TEXTS, pause_s=3.0), model)
    check_one_final_per_utterance(run, [t for t in TEXTS if "delta" not in t])


def test_a_final_that_hears_only_the_lead_in_is_decoded_again_without_it() -> None:
    # A model may read the previous utterance (forced in front) and stop: the new words must
    # not be lost.
    session, model = Session(), ScriptedModel()
    answered: list[DecodeRequest] = []

    run = Run()
    audio = speak(*TEXTS)
    for offset in range(0, len(audio), FRAME):
        session.receive_audio(audio[offset : offset + FRAME])
        while (request := session.next_request()) is not None:
            run.requests.append(request)
            if request.urgent and request.context_words and not any(a.segment_key == request.segment_key for a in answered):
                answered.append(request)
                session.receive_hypothesis(request.id, Hypothesis(words=request.prefix[: request.context_words]))
                again = session.next_request()
                assert again is not None and again.segment_key == request.segment_key and again.urgent and again.context_words == 0
                request = again
            session.receive_hypothesis(request.id, transcribe(model, request.audio, request.prefix, request.draft, request.options))
        run.events += session.events()
    drive(session, audio[:0], model, run=run)
    assert len(answered) == len(TEXTS) - 1  # every utterance but the first has a lead-in
    check_one_final_per_utterance(run, TEXTS)


# -- what partials show ------------------------------------------------------------------
@pytest.mark.parametrize("lag", [0, 10])
def test_stable_text_never_changes_and_the_final_keeps_it(lag: int) -> None:
    run = drive(Session(), speak(script(12), "mike november oscar papa"), ScriptedModel(), lag=lag)
    check_one_final_per_utterance(run, [script(12), "mike november oscar papa"])
    for final in run.finals:
        shown = [p for p in run.partials if p.segment == final.segment]
        assert len(shown) >= 2
        for before, after in zip(shown, shown[1:]):
            assert before.stable <= after.stable <= len(after.text)
            assert after.text[: before.stable] == before.text[: before.stable]
        assert shown[-1].stable > 0 and final.text.startswith(shown[-1].text[: shown[-1].stable])
        assert len({p.text for p in shown}) == len(shown)  # a partial that changes nothing is not sent


def test_partials_hold_back_the_word_at_the_edge_while_speech_goes_on() -> None:
    audio = speak(script(10))[: int(3.0 * SAMPLE_RATE)]  # speech all the way: never a pause
    session, model = Session(), ScriptedModel()
    run = drive(session, audio, model, end=False)
    assert run.partials and not run.finals
    heard = [" ".join(d.result) for d in model.decodes]
    for partial in run.partials:
        # Each shows less than some decode heard: the newest word may be cut off by the edge.
        assert any(h.startswith(partial.text) and len(h) > len(partial.text) for h in heard)


# -- decode requests -----------------------------------------------------------------------
def test_finals_ask_for_the_configured_beam_and_partials_stay_greedy() -> None:
    model = ScriptedModel()
    config = SessionConfig(final_beam_size=5)
    # Quick decodes: finals decoded early; slow ones: finals decoded after the end.
    quick, slow = drive(Session(config), speak(*TEXTS), model), drive(Session(config), speak(*TEXTS), model, lag=40)
    run = Run(requests=quick.requests + slow.requests)
    urgent = [r for r in run.requests if r.urgent]
    partial = [r for r in run.requests if not r.urgent]
    assert any(r.final for r in urgent) and any(r.early_end is not None for r in urgent) and partial
    assert {r.options.beam_size for r in urgent} == {5}
    assert {r.options.beam_size for r in partial} == {1}
    # The model was asked exactly that.
    assert sorted(d.options.beam_size for d in model.decodes) == sorted(r.options.beam_size for r in run.requests)


def test_partials_force_the_confirmed_words_and_the_final_drafts_the_latest_partial() -> None:
    run = drive(Session(), speak(script(12)), ScriptedModel())
    partials = [r for r in run.requests if not r.urgent]
    forced = [len(r.prefix) for r in partials]
    assert forced == sorted(forced) and forced[-1] >= 8  # the forced prefix only grows
    (final,) = run.finals
    (last_urgent,) = [r for r in run.requests if r.urgent]
    # The request whose answer became the final: the early final made where the utterance ended.
    assert last_urgent.early_end is not None and last_urgent.early_end == pytest.approx(final.end * SAMPLE_RATE)
    assert last_urgent.draft[: forced[-1]] == partials[-1].prefix


def test_one_decode_at_a_time_and_an_unknown_answer_is_refused() -> None:
    session, model = Session(SessionConfig(partial_interval_s=0.4)), ScriptedModel()
    audio = speak(script(8))
    session.receive_audio(audio[:SAMPLE_RATE])
    first = session.next_request()
    assert first is not None and session.next_request() is None  # never two in flight
    session.receive_audio(audio[SAMPLE_RATE : 2 * SAMPLE_RATE])
    assert session.next_request() is None
    session.receive_hypothesis(first.id, transcribe(model, first.audio), 0.05)
    second = session.next_request()
    assert second is not None and len(second.audio) > len(first.audio)
    with pytest.raises(ValueError):
        session.receive_hypothesis(first.id, transcribe(model, first.audio))


def test_a_partial_in_flight_is_withdrawn_for_the_early_final_and_no_word_is_lost() -> None:
    session, model = Session(), ScriptedModel()
    audio = speak("alpha bravo charlie delta")
    partial, withdrawn = None, 0
    for offset in range(0, len(audio), FRAME):
        session.receive_audio(audio[offset : offset + FRAME])
        if partial is None:
            partial = session.next_request()  # a partial, then left unanswered: a slow decode
            assert partial is None or not partial.urgent
            continue
        if session.final_due:
            with pytest.raises(ValueError):
                session.withdraw(partial.id + 100)  # only the partial in flight
            session.withdraw(partial.id)
            withdrawn += 1
            break
        assert session.next_request() is None  # still one decode at a time
    assert withdrawn == 1 and not session.final_due
    early = session.next_request()
    assert early is not None and early.urgent and early.early_end is not None  # at once, not after the partial
    with pytest.raises(ValueError):
        session.receive_hypothesis(partial.id, transcribe(model, partial.audio))  # withdrawn: its answer is refused
    with pytest.raises(ValueError):
        session.withdraw(early.id)  # a final is never withdrawn
    session.receive_hypothesis(early.id, transcribe(model, early.audio, early.prefix, early.draft, early.options), 0.01)
    run = drive(session, silence(1.0), model)
    assert texts(run.finals) == ["alpha bravo charlie delta"]


def test_partials_of_a_long_utterance_come_at_a_share_of_its_length() -> None:
    """Each partial reads the utterance again: past 3.3 s, at least 12% of it between two."""
    audio = speak(script(40))  # about 20 s without a pause
    run = drive(Session(SessionConfig(partial_interval_s=0.4)), audio, ScriptedModel())
    partials = [len(r.audio) / SAMPLE_RATE for r in run.requests if not r.urgent and r.check is None]
    gaps = [(before, after - before) for before, after in zip(partials, partials[1:]) if after > before]
    assert any(before < 3.0 for before, _ in gaps) and any(before > 10 for before, _ in gaps)
    for before, gap in gaps:
        assert gap >= max(0.4, 0.12 * before) - 0.021, (before, gap)  # a frame of slack
        if before < 3.0:
            assert gap <= 0.45  # short utterances keep the cadence


def test_partials_until_an_utterance_shows_words_say_so() -> None:
    run = drive(Session(), speak(script(12)), ScriptedModel())
    partials = [r for r in run.requests if not r.urgent and r.check is None]
    assert partials[0].first_words and not partials[-1].first_words  # the engine puts them first
    assert not any(r.first_words for r in run.requests if r.urgent or r.check is not None)


def test_slow_decodes_make_partials_rarer_not_later() -> None:
    session = Session(SessionConfig(partial_interval_s=0.4))
    assert session.partial_interval == pytest.approx(0.4)
    session.receive_audio(speak(script(8))[:SAMPLE_RATE])
    request = session.next_request()
    assert request is not None
    session.receive_hypothesis(request.id, Hypothesis(), wall_seconds=1.2)
    assert session.partial_interval == pytest.approx(1.8)


def test_audio_after_end_is_refused() -> None:
    session = Session()
    session.end()
    assert session.finished
    with pytest.raises(RuntimeError):
        session.receive_audio(silence(0.02))


# -- no caption without words, and a resumed session's numbering -------------------------------
@pytest.mark.parametrize("name", sorted(NON_SPEECH))
def test_no_caption_for_non_speech(name: str) -> None:
    assert drive(Session(), NON_SPEECH[name](), ScriptedModel()).events == []


def test_a_resumed_session_continues_its_numbering_and_clock() -> None:
    run = drive(Session(first_segment=4, clock_offset_s=12.0), speak(*TEXTS[:2]), ScriptedModel())
    check_one_final_per_utterance(run, TEXTS[:2], first_segment=4)
    assert all(e.start >= 12.0 for e in run.events)


# -- the stabilizer ---------------------------------------------------------------------------
def words(text: str) -> tuple[Word, ...]:
    return tuple(word(w) for w in text.split())


def test_the_stabilizer_confirms_what_two_hypotheses_agree_on_but_never_the_newest_words() -> None:
    stabilizer = Stabilizer(holdback=2)
    assert stabilizer.update(words("alpha bravo")) == words("alpha bravo") and stabilizer.confirmed == ()
    stabilizer.update(words("alpha bravo charlie delta"))
    # Agreed on two words, but "bravo" ended the first hypothesis: it may have been cut off.
    assert stabilizer.confirmed == words("alpha")
    stabilizer.update(words("alpha bravo charlie echo foxtrot"))
    assert stabilizer.confirmed == words("alpha bravo charlie")
    assert stabilizer.confirmed_text == "alpha bravo charlie"


def test_the_stabilizer_never_takes_back_a_confirmed_word() -> None:
    stabilizer = Stabilizer()
    stabilizer.update(words("alpha bravo charlie delta"))
    stabilizer.update(words("alpha bravo charlie delta echo"))
    confirmed = stabilizer.confirmed
    assert confirmed == words("alpha bravo charlie")
    # A hypothesis that disagrees (decoded without the prefix) keeps the confirmed words first.
    shown = stabilizer.update(words("alpha golf charlie delta echo"))
    assert shown[: len(confirmed)] == confirmed and stabilizer.confirmed == confirmed
    assert stabilizer.update(words("")) == confirmed and stabilizer.latest == confirmed


# -- numbers written one way --------------------------------------------------------------
class SpelledNumbersModel(ScriptedModel):
    """Hears the scripted words as a sentence that spells its numbers out."""

    SAYS = {"alpha": "sales", "bravo": "grew", "charlie": "ninety", "delta": "eight", "echo": "percent",
            "foxtrot": "in", "golf": "twenty", "hotel": "twenty", "india": "one"}

    def decode(self, features, prefix=(), draft=(), options=DecodeOptions()):  # type: ignore[no-untyped-def]
        hypothesis = super().decode(features, prefix, draft, options)
        said = tuple(Word(" " + self.SAYS.get(w.text.strip(), w.text.strip()), w.tokens) for w in hypothesis.words)
        return Hypothesis(words=said, language=hypothesis.language)


@pytest.mark.parametrize("lag", [0, 10])
def test_numbers_are_written_as_figures_in_partials_and_finals_with_stable_text_kept(lag: int) -> None:
    spoken = "alpha bravo charlie delta echo foxtrot golf hotel india"
    run = drive(Session(), speak(spoken), SpelledNumbersModel(), lag=lag)
    assert [f.text for f in run.finals] == ["sales grew 98% in 2021"]
    assert any(any(c.isdigit() for c in p.text) for p in run.partials)  # partials too, not only the final
    final = run.finals[0]
    for before, after in zip(run.partials, run.partials[1:]):
        assert after.text[: before.stable] == before.text[: before.stable]  # a promise kept, numbers or not
    assert final.text.startswith(run.partials[-1].text[: run.partials[-1].stable])


def test_the_spoken_style_keeps_the_models_words() -> None:
    run = drive(Session(SessionConfig(numbers="spoken")), speak("alpha bravo charlie delta echo foxtrot golf hotel india"), SpelledNumbersModel())
    assert [f.text for f in run.finals] == ["sales grew ninety eight percent in twenty twenty one"]


# -- a final's words reach the end of its audio ------------------------------------------------
def test_words_a_model_drops_at_the_end_of_a_long_utterance_follow_its_final() -> None:
    # A model that ends its text early (as Whisper does on long audio) with nothing to say so.
    long = script(30).split()  # 12 s without a pause
    config = SessionConfig(vad=VadConfig(max_utterance_s=30.0))
    run = drive(Session(config), speak(" ".join(long), "alpha bravo"), ScriptedModel(stops_after=22), lag=5)
    check_one_final_per_utterance(run, [" ".join(long[:22]), " ".join(long[22:]), "alpha bravo"])
    dropped = run.finals[1]
    assert run.finals[0].end == dropped.end and dropped.end - dropped.start == pytest.approx(config.tail_check_s)
    checks = [r for r in run.requests if r.check is not None]
    assert len(checks) == 1 and len(checks[0].audio) == config.tail_check_s * SAMPLE_RATE
    assert checks[0].final and checks[0].options.beam_size == 1 and not checks[0].prefix


def test_words_dropped_further_back_than_one_window_are_found_window_by_window() -> None:
    # The final stops after 2.6 s of a 10.4 s utterance: the windows before the last are
    # decoded, back to the one where the final ends, and all the words after it follow, once
    # each. (Sixteen words, no two alike, each 0.35 s from the next.)
    said = script(16).split()
    audio = np.concatenate([silence(0.5), utterance(" ".join(said), gap_s=0.35), silence(1.0), utterance("alpha bravo"), silence(1.0)])
    config = SessionConfig(vad=VadConfig(max_utterance_s=30.0), tail_check_min_s=8.0)
    run = drive(Session(config), audio, ScriptedModel(stops_after=4, stops_over_s=6.0), lag=5)
    check_one_final_per_utterance(run, [" ".join(said[:4]), " ".join(said[4:]), "alpha bravo"])
    windows = [r for r in run.requests if r.check is not None]
    assert len(windows) >= 2 and [r.check.end for r in windows] == sorted((r.check.end for r in windows), reverse=True)


def test_words_a_final_dropped_long_before_its_tail_are_found_by_reading_the_whole_utterance_again() -> None:
    # The final's beam search ends after 4 of 16 words (10.4 s); greedy reads of any part read
    # all of it, so the tail's words cannot be placed, and the whole utterance is read again.
    said = script(16).split()
    audio = np.concatenate([silence(0.5), utterance(" ".join(said), gap_s=0.35), silence(1.0), utterance("alpha bravo"), silence(1.0)])
    config = SessionConfig(vad=VadConfig(max_utterance_s=30.0), final_beam_size=3)
    run = drive(Session(config), audio, ScriptedModel(stops_after=4, stops_in_beam=True), lag=5)
    check_one_final_per_utterance(run, [" ".join(said[:4]), " ".join(said[4:]), "alpha bravo"])
    checks = [r for r in run.requests if r.check is not None]
    assert [r.check.whole for r in checks if r.check is not None] == [False, True]
    assert len(checks[1].audio) > 10 * SAMPLE_RATE and checks[1].options.beam_size == 1
    assert run.finals[1].start > run.finals[0].start and run.finals[1].end == run.finals[0].end


class _MishearsTailsModel(ScriptedModel):
    """Reads 3-5 s of audio (a tail) with its last word wrong, as Whisper read "金屬" as "金素"."""

    def decode(self, features, prefix=(), draft=(), options=DecodeOptions()):  # type: ignore[no-untyped-def]
        heard = super().decode(features, prefix, draft, options)
        if 3.0 < features.duration <= 5.0 and heard.words:
            return replace(heard, words=(*heard.words[:-1], Word(" zulu", (0,))))
        return heard


def test_a_tail_that_only_misreads_the_finals_last_word_adds_nothing() -> None:
    # The tail cannot be placed (its last word differs); the whole utterance read again ends
    # where the final does, and the tail's other words are the final's: nothing was dropped,
    # and no window further back is read (which once added the tail's words a second time).
    said = script(16).split()
    audio = np.concatenate([silence(0.5), utterance(" ".join(said), gap_s=0.35), silence(1.0), utterance("alpha bravo"), silence(1.0)])
    config = SessionConfig(vad=VadConfig(max_utterance_s=30.0))
    run = drive(Session(config), audio, _MishearsTailsModel(), lag=5)
    check_one_final_per_utterance(run, [" ".join(said), "alpha bravo"])
    assert [r.check.whole for r in run.requests if r.check is not None] == [False, True]


def test_a_decode_stopped_short_on_a_short_utterance_is_checked_too() -> None:
    said = script(7).split()  # 2.7 s; its last 2 s hold five words or six (a pre-roll), which the model returns whole
    run = drive(Session(), speak(" ".join(said), "alpha bravo"), ScriptedModel(stops_after=6, stop_reason="loop"))
    check_one_final_per_utterance(run, [" ".join(said[:6]), said[6], "alpha bravo"])
    assert sum(r.check is not None for r in run.requests) == 1


def test_short_utterances_that_end_as_decoded_are_not_checked() -> None:
    run = drive(Session(), speak(*TEXTS), ScriptedModel())
    check_one_final_per_utterance(run, TEXTS)
    assert not any(r.check is not None for r in run.requests)


def test_a_failed_check_leaves_the_final_as_it_was_sent() -> None:
    long = script(30)
    config = SessionConfig(vad=VadConfig(max_utterance_s=30.0))
    run = drive(Session(config), speak(long, "alpha bravo"), ScriptedModel(stops_after=22), fail=lambda r: r.check is not None)
    assert run.failed
    check_one_final_per_utterance(run, [" ".join(long.split()[:22]), "alpha bravo"])


@pytest.mark.parametrize("skipped", [3, 7])
def test_words_a_model_skips_at_the_start_of_a_final_with_no_partial_before_it_are_not_lost(skipped: int) -> None:
    # All the audio at once (a recording sent faster than it is decoded): no partial before the
    # final, whose decode skips its first words; its first half (3.1 s) decoded alone does not.
    # Three skipped: the final is placed in the head and the three put in front; seven (the
    # whole head): the final is decoded again with the head's words forced in front.
    said = script(14)  # 5.6 s
    audio = speak(said, "alpha bravo")
    run = drive(Session(), audio, ScriptedModel(skips_first=skipped, skips_over_s=5.0), frame=len(audio))
    check_one_final_per_utterance(run, [said, "alpha bravo"])
    (head,) = [r for r in run.requests if r.check is not None and r.check.head]
    assert head.check is not None and len(head.check.words) == 14 - skipped and len(head.audio) < 3.5 * SAMPLE_RATE
    again = [r for r in run.requests if r.final and r.prefix and not r.context_words]
    assert len(again) == (skipped == 7)


def test_a_final_whose_head_check_fails_goes_out_as_decoded() -> None:
    said = script(14)
    audio = speak(said, "alpha bravo")
    model = ScriptedModel(skips_first=3, skips_over_s=5.0)
    run = drive(Session(), audio, model, frame=len(audio), fail=lambda r: r.check is not None and r.check.head)
    assert run.failed
    check_one_final_per_utterance(run, [" ".join(said.split()[3:]), "alpha bravo"])


def test_finals_after_partials_or_behind_a_lead_in_wait_for_no_head_check() -> None:
    run = drive(Session(), speak(script(14), *TEXTS), ScriptedModel())
    assert not any(r.check is not None and r.check.head for r in run.requests)
