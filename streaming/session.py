"""One publisher's captioning state machine, with no sockets, threads or event loop.

Drive it like ``h11.Connection``:

    session.receive_audio(samples)          # float32, 16 kHz, any chunk size
    while (request := session.next_request()) is not None:
        hypothesis = <run request on a model, anywhere>
        session.receive_hypothesis(request.id, hypothesis)
    for event in session.events(): ...      # PartialCaption / FinalCaption, after audio too

Timing decisions use the stream's own audio clock (samples received), so the same audio fed
the same way gives the same requests, whatever the machine.

- Speech is cut into utterances by :mod:`vad.segmenter`.
- While an utterance is open it is re-decoded every ``partial_interval_s`` of new audio (the
  interval grows when decodes are slow, and with the utterance's length), never with more than
  one decode pending.
- Words confirmed by :class:`Stabilizer` are forced as the prefix of the next partial decode,
  so a partial's ``stable`` characters never change in later partials; the rest of the
  previous hypothesis goes along as a draft, which the model checks in one pass.
- The final is decoded on the whole utterance with the latest partial as its draft: it is
  what greedy decoding of the complete utterance gives (the most accurate text, which may
  correct a word the partials had settled on), for little more than one decoder pass.
- The final is decoded early: once the speaker has been silent for the segmenter's
  ``tail_ms``, the utterance's end is known unless they resume, so its final is decoded then
  and shown as a partial; when the silence reaches ``end_silence_ms`` it is sent as the final
  at once. The wait for the end of an utterance and the final's decode overlap, so a longer
  ``end_silence_ms`` (fewer sentences cut at a pause) costs less latency.
- When an utterance ends (trailing silence, length cap, ``flush`` or ``end``) its final is
  decoded before anything else of this session. A partial still in flight when a final (or
  early final) falls due should be given up (:attr:`final_due`, :meth:`withdraw`): the final
  must not wait for it.
- An utterance that follows the previous one closely is decoded with the previous one in
  front of it, audio and (forced) words, and only the new words are kept: a short phrase after
  a pause ("However, | due to the slow...") is heard in its sentence, not alone.

The module is longer than most because an utterance's whole life is here (cadence, lead-in,
early final, language lock, final); split up, each rule would have to be read in several places.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from decoder.api import SAMPLE_RATE, DecodeOptions, Hypothesis, Word, join_words
from decoder.context import Context
from streaming.coverage import Coverage, coverage, echoes, head_coverage, spoken
from streaming.numbers import write_numbers, write_numbers_partial
from streaming.scoring import normalize
from streaming.stabilizer import Stabilizer
from vad.segmenter import Segmenter, SpeechChunk, SpeechEnd, SpeechStart, VadConfig


@dataclass(frozen=True)
class SessionConfig:
    vad: VadConfig = field(default_factory=VadConfig)
    partial_interval_s: float = 0.4  # audio between two partial decodes, at the least
    min_partial_audio_s: float = 0.5  # no partial for less speech than this
    # When decodes take longer, the interval grows to this many times the decode time,
    # so a busy machine gets fewer, not later, partials.
    busy_factor: float = 1.5
    # Each partial reads the whole utterance so far again, so at a fixed interval an utterance's
    # partials cost compute that grows with the square of its length: the interval is also at
    # least this share of the utterance (0.4 s up to 3.3 s, 0.6 s at 5 s, 1.2 s at 10 s).
    partial_interval_share: float = 0.12
    max_partial_interval_s: float = 3.0
    # The previous utterance is decoded in front of the current one when it ended at most
    # context_gap_s before and is at most context_max_s long.
    context_gap_s: float = 2.0
    context_max_s: float = 6.0
    # With language detection, partials keep an utterance's language once two detections on at
    # least language_lock_s of audio agree; its final detects it again over the whole utterance.
    # Until an utterance is language_keep_s long, the language the last final detected is kept
    # unless the audio rules it out (a speaker rarely switches language between sentences, and
    # two seconds are easily mistaken for another language; but a speaker who does switch must
    # not stay captioned in the old one).
    language_lock_s: float = 2.0
    language_keep_s: float = 4.0
    # While the speaker is still talking, the newest word of a hypothesis is usually cut off by
    # the end of the audio and changes in the next partial; partials leave it out until the
    # audio has ended in this much silence.
    settled_silence_ms: int = 200
    # The first second or so of an utterance gives the model little to go on: two words are
    # held back while the utterance is younger than this.
    young_utterance_s: float = 1.5
    # Finals (and early finals) are decoded by a beam search this wide; partials greedily.
    final_beam_size: int = 1
    # How captions write numbers: "digits" ("98% in 2021") or "spoken" (the model's words).
    numbers: str = "digits"
    # A final's words may stop before its audio does (a decode stopped short, or the model ended
    # its text early, as Whisper does on long audio): after the final of an utterance at least
    # tail_check_min_s long, or of one whose decode stopped short, its last tail_check_s are
    # decoded alone, and words the final dropped follow as a final of their own (see
    # streaming/coverage.py). The final itself is not held back for the check.
    tail_check_min_s: float = 6.0
    tail_check_s: float = 5.0
    # A model may also skip the first words of an utterance it decodes with nothing before it:
    # a final of at least head_check_min_s with no partial shown before it waits for its
    # first half (tail_check_s at most) to be decoded alone; words it skipped are put in front,
    # or, if it holds none of the head's words, it is decoded again after them.
    head_check_min_s: float = 4.0


@dataclass(frozen=True)
class Check:
    """What a decode of part of an utterance's audio, alone, checks: its final's words."""

    words: tuple[Word, ...]
    # The beginning of the audio (the final waits), or else a window of its end (the final was
    # sent), ending ``end`` samples into the utterance; ``later``: the words of the windows after
    # it, decoded already (a final that ended long before its audio is looked for further back).
    # ``whole``: the whole utterance, read again alone when the final's end is not in its tail.
    head: bool = False
    final_cut: bool = False  # a head check's final: its decode stopped short
    end: int = 0
    later: tuple[tuple[Word, ...], ...] = ()
    whole: bool = False


@dataclass(frozen=True)
class DecodeRequest:
    id: int
    segment_key: int  # the utterance it belongs to (internal: segments are numbered when shown)
    audio: np.ndarray
    prefix: tuple[Word, ...]  # forced words: context words first, then confirmed words
    draft: tuple[Word, ...]  # likely continuation, verified by the model (see SpeechModel.decode)
    final: bool
    options: DecodeOptions  # language, context and beam, as the model takes them
    context_words: int = 0  # leading words of ``prefix`` (and of the result) that are context
    speaking: bool = True  # the audio ended mid-speech (not in a pause)
    # An early final: the utterance's final if it ends here (see the module notes).
    early_end: int | None = None
    check: Check | None = None  # a check of a final's words: ``audio`` is part of its utterance
    # A partial of an utterance that has shown no words yet: under load it goes before other
    # partials, since an utterance's first words are what a viewer waits for longest.
    first_words: bool = False

    @property
    def urgent(self) -> bool:
        """A final, or likely one: it is on the latency path and goes before partials."""
        return self.final or self.early_end is not None

    @property
    def kind(self) -> str:
        """What it is for, as /metrics counts decodes."""
        if self.options.task == "translate":
            return "translation"
        if self.check is not None:
            return "head check" if self.check.head else "tail check"
        return "final" if self.final else "early final" if self.early_end is not None else "partial"


@dataclass(frozen=True)
class PartialCaption:
    segment: int
    text: str
    stable: int  # leading characters of ``text`` that will not change
    start: float
    end: float
    language: str


@dataclass(frozen=True)
class FinalCaption:
    segment: int
    text: str
    start: float
    end: float
    language: str
    # The utterance's audio, in a session that keeps it (see Session.keep_audio).
    audio: np.ndarray | None = field(default=None, compare=False, repr=False)


CaptionEvent = PartialCaption | FinalCaption


@dataclass(frozen=True)
class _Heard:
    """An utterance that was captioned: its audio and final's words, and where it ended (a
    sample index on the session clock); the next utterance may be decoded after it."""

    audio: np.ndarray
    words: tuple[Word, ...]
    end: int


@dataclass(frozen=True)
class _Detection:
    """An early final's language: the one detected, and whether it was detected at all (not
    asked for by name)."""

    detected: bool
    language: str


@dataclass
class _Utterance:
    key: int
    start: int  # sample index on the session clock
    chunks: list[np.ndarray] = field(default_factory=list)
    length: int = 0
    end: int | None = None  # set when the utterance is over
    cut: bool = False  # ended by the length cap: confirmed words may lie past the cut
    segment: int | None = None  # numbered when first shown
    shown: tuple[Word, ...] = ()  # words of the latest partial sent
    decoded_length: int = 0  # samples covered by the latest decode request
    stabilizer: Stabilizer = field(default_factory=Stabilizer)
    # What the publisher asked for (a code, "auto", or candidates "en,zh"), and what partial
    # decodes ask for: the same until detection locks it. ``detected`` is the latest language a
    # decode came back with (reported before the lock); ``detection`` the latest one detected.
    asked: str = "en"
    language: str = "en"
    detected: str | None = None
    detection: str | None = None
    # The previous utterance, decoded in front of this one.
    lead_in: _Heard | None = None
    # The early final: where it supposed the utterance ends, and its words once decoded.
    early_end: int | None = None
    early_words: tuple[Word, ...] | None = None
    early_cut: bool = False  # the early final's decode stopped short
    forced: tuple[Word, ...] = ()  # words the final's decode must start with (see _skipped)
    early_language: _Detection | None = None
    discarded: bool = False  # dropped by discard(): decodes in flight for it are ignored

    @property
    def reported_language(self) -> str:
        return self.detected if _automatic(self.language) and self.detected else self.language

    def audio(self) -> np.ndarray:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        self.chunks = [audio]
        return audio if self.end is None else audio[: self.end - self.start]


def _without_reread(lead: tuple[Word, ...], words: tuple[Word, ...]) -> tuple[Word, ...]:
    """Drop a re-reading of the lead-in from the new words.

    Given the previous utterance (forced) and little new audio, the model sometimes reads the
    previous utterance again ("And so my fellow Americans | and so my fellow America"), at the
    start of the new words or after them ("Ask not. And so my fellow Americans ask": having
    read the new audio, it starts over from the lead-in's). New words that repeat the whole
    lead-in (but at most its last word), case and punctuation aside, the last one possibly cut
    short, are that: at the start they are dropped; after new words (where it takes three
    words or more to be sure), they and all that follows are. A new sentence that merely starts
    like the previous one ("It was the first... | It was not so much...") is kept."""
    said = [text for text in (" ".join(normalize(w.text)) for w in lead) if text]
    said_at = spoken(words)
    heard = [text for _, text in said_at]
    whole = max(2, len(said) - 1)
    skip = _reread_length(said, heard)
    if skip < whole:
        skip = 0
    begin = 0 if not skip else said_at[skip][0] if skip < len(said_at) else len(words)
    for at in range(skip + 1, len(heard)):
        if _reread_length(said, heard[at:]) >= max(3, whole):
            return words[begin : said_at[at][0]]
    return words[begin:]


def _reread_length(said: list[str], heard: list[str]) -> int:
    """How many of ``heard``'s first words read ``said`` again (the last one maybe cut short)."""
    matched = 0
    while matched < min(len(said), len(heard)) and heard[matched] == said[matched]:
        matched += 1
    if matched < len(said) and matched == len(heard) - 1 and said[matched].startswith(heard[matched]):
        matched += 1  # the re-read's last word, cut off by the end of the audio
    return matched


class Session:
    def __init__(
        self,
        config: SessionConfig = SessionConfig(),
        language: str = "en",
        context: Context | None = None,
        first_segment: int = 0,
        clock_offset_s: float = 0.0,
        last_language: str | None = None,
        partials: bool = True,
        keep_audio: bool = False,
    ):
        """``first_segment``, ``clock_offset_s`` and ``last_language`` continue a session from an
        earlier life (resumed after a server restart): numbering, the audio clock and the language
        its last final was in go on from there. Without ``partials``, only finals are decoded
        (no partials, no early finals): a recording transcribed as a whole."""
        self.config = config
        self.partials = partials
        self.keep_audio = keep_audio  # finals carry their audio: to be translated, or decoded by a shadow model
        self._clock_offset = clock_offset_s
        self.language = language
        self._last_language = last_language  # the latest utterance language detection fixed
        self.context = context
        self._segmenter = Segmenter(config.vad)
        self._keys = itertools.count()
        self._request_ids = itertools.count(1)
        self._next_segment = first_segment
        self._open: _Utterance | None = None
        self._closing: deque[_Utterance] = deque()
        self._in_flight: tuple[DecodeRequest, _Utterance] | None = None
        # Finals sent whose tails are to be checked: the utterance, the check, its language.
        self._unchecked: deque[tuple[_Utterance, Check, str]] = deque()
        # A final waiting for the check of its head: the utterance, its words, whether its
        # decode stopped short.
        self._headless: tuple[_Utterance, tuple[Word, ...], bool] | None = None
        self._events: list[CaptionEvent] = []
        self._previous: _Heard | None = None
        self._ending = False
        self._decode_seconds = 0.0  # smoothed wall time of recent decodes

    # -- input -------------------------------------------------------------------------------
    def receive_audio(self, samples: np.ndarray) -> None:
        if self._ending:
            raise RuntimeError("audio after end()")
        for event in self._segmenter.feed(samples):
            self._segment_event(event)

    def flush(self) -> None:
        """Finalise the utterance in progress now."""
        for event in self._segmenter.flush():
            self._segment_event(event)

    def discard(self) -> None:
        """Drop the utterance in progress: no final of its words (the client cleared its audio).
        A partial already shown is withdrawn by an empty final of its segment."""
        self._segmenter.flush()  # its events are the dropped utterance's
        utterance, self._open = self._open, None
        if utterance is None:
            return
        utterance.discarded = True
        utterance.end = utterance.start + utterance.length
        if utterance.segment is not None:
            start, end = self._times(utterance, utterance.end)
            self._events.append(FinalCaption(utterance.segment, "", start, end, utterance.reported_language))

    def end(self) -> None:
        """No more audio: finalise everything; :attr:`finished` turns true when done."""
        self.flush()
        self._ending = True

    def _language_for(self, utterance: _Utterance, samples: int, whole: bool) -> tuple[str, str | None]:
        """What to ask the model for, and the likely language. Partials keep the language
        locked early, so that they do not flip; a final (``whole``) reads the whole utterance
        and detects it again over all of it, as offline decoding would. A short utterance is
        likely in the session's last detected language: detection keeps it unless ruled out."""
        language = utterance.asked if whole else utterance.language
        if _automatic(language) and samples < self.config.language_keep_s * SAMPLE_RATE:
            return language, self._last_language
        return language, None

    def configure(self, language: str | None = None, context: Context | None = None) -> None:
        """Applies from the next utterance on."""
        if language is not None:
            self.language = language
        if context is not None:
            self.context = context

    def receive_hypothesis(self, request_id: int, hypothesis: Hypothesis, wall_seconds: float | None = None) -> str | None:
        """Takes a decode's result. For the check of a final's tail or head, returns what it
        found ("tail_covered", "head_extended", ...: the end checked, then "covered",
        "extended" or "unmatched"; see streaming/coverage.py) for the caller to count."""
        request, utterance = self._take_in_flight(request_id)
        if utterance.discarded:
            return None
        check = request.check
        if check is not None and check.head:
            checked = head_coverage(check.words, hypothesis.words)
            if checked.outcome == "unmatched" and _skipped(check.words, hypothesis.words):
                # The final holds none of the head's words: decode it again after them (the last
                # one may be cut off by the window), so that it goes on from there.
                utterance.forced = hypothesis.words[:-1]
                return "head_skipped"
            self._closing.remove(utterance)
            self._emit_final(utterance, _in_front(checked.added, check.words), check.final_cut)
            return f"head_{checked.outcome}"
        if check is not None:
            return self._tail_checked(utterance, check, hypothesis.words, request.options.language or utterance.language)
        # An early final whose utterance has meanwhile ended where it supposed is the final.
        final = request.final or (request.early_end is not None and utterance.end == request.early_end)
        if utterance.end is not None and not final:
            return None  # a partial (or an early final that guessed wrong) of an utterance now over
        if wall_seconds is not None:
            self._decode_seconds = 0.7 * self._decode_seconds + 0.3 * wall_seconds if self._decode_seconds else wall_seconds
        words = hypothesis.words[request.context_words :]
        if request.context_words:
            words = _without_reread(request.prefix[: request.context_words], words)
            # The punctuation that closed the lead-in's sentence belongs to it, not to the new one.
            while words and not normalize(words[0].text):
                words = words[1:]
            if request.urgent and not words:
                # The model heard only the lead-in (it may close the sentence there and stop):
                # decode the utterance again on its own rather than lose its words.
                utterance.lead_in = None
                utterance.early_end = None  # asked again: as the final, or early if still open
                return None
        if hypothesis.language and _automatic(utterance.asked):
            detected = request.options.detects
            agreed = detected and hypothesis.language == utterance.detection
            utterance.detected = hypothesis.language
            if detected:
                utterance.detection = hypothesis.language
            # Detection on a second or two of audio is a guess (an English sentence was once
            # taken for Greek with probability 0.78 on its first two seconds). Partials keep
            # the language once two detections on enough audio agree, so they do not flip
            # mid-sentence; the final is the whole utterance's own detection. An early final
            # counts only if it becomes the final: the speaker may be pausing after a word.
            if final:
                self._fix_language(utterance, detected, hypothesis.language)
            elif request.early_end is not None:
                utterance.early_language = _Detection(detected, hypothesis.language)
            elif agreed and _automatic(utterance.language) and len(request.audio) >= self.config.language_lock_s * SAMPLE_RATE:
                utterance.language = hypothesis.language
        if final:
            if words and not request.prefix and not utterance.shown:
                if len(utterance.audio()) >= self.config.head_check_min_s * SAMPLE_RATE:
                    self._headless = (utterance, words, hypothesis.cut is not None)  # see _head_request
                    return None
            self._closing.remove(utterance)
            self._emit_final(utterance, words, hypothesis.cut is not None)
            return None
        if request.early_end is not None:
            utterance.early_words, utterance.early_cut = words, hypothesis.cut is not None
            confirmed = utterance.stabilizer.confirmed
            if words[: len(confirmed)] != confirmed:
                return None  # it corrects a word partials promised to keep: only the final may
        self._emit_partial(utterance, utterance.stabilizer.update(words), request.speaking)
        return None

    def receive_failure(self, request_id: int) -> None:
        """The decode failed: a final still goes out with what partials had shown."""
        request, utterance = self._take_in_flight(request_id)
        if utterance.discarded:
            return
        if request.check is not None and request.check.head:  # the final goes out unchecked
            self._closing.remove(utterance)
            self._emit_final(utterance, request.check.words, request.check.final_cut)
        elif request.final and request.check is None:  # a failed tail check leaves the final as sent
            self._closing.remove(utterance)
            self._emit_final(utterance, utterance.shown)

    # -- output ------------------------------------------------------------------------------
    def next_request(self) -> DecodeRequest | None:
        if self._in_flight is not None:
            return None
        if self._unchecked:
            return self._tail_request(*self._unchecked.popleft())
        if self._headless is not None:
            request = self._head_request(*self._headless)
            self._headless = None
            return request
        if self._closing:
            closing = self._closing[0]
            # After a length cut, the partials' words may belong to the audio past the cut.
            draft = () if closing.cut or closing.forced else closing.stabilizer.latest
            return self._request(closing, final=True, prefix=closing.forced, draft=draft)
        utterance = self._open
        if utterance is None or not self.partials:
            return None
        pending_end = self._segmenter.pending_end
        if pending_end is not None and pending_end != utterance.early_end:
            utterance.early_end, utterance.early_words, utterance.early_language = pending_end, None, None
            return self._request(utterance, final=False, prefix=(), draft=utterance.stabilizer.latest, early_end=pending_end)
        new_audio = utterance.length - utterance.decoded_length
        if utterance.length < self.config.min_partial_audio_s * SAMPLE_RATE or new_audio <= 0:
            return None
        # No decode of its own when the speaker pauses: at tail_ms into the pause the early
        # final (above) shows the whole hypothesis, and one 100 ms before it would cost a whole
        # decode and hold the model just as the early final asks for it.
        if new_audio < max(self.partial_interval * SAMPLE_RATE, self.config.partial_interval_share * utterance.length):
            return None
        confirmed = utterance.stabilizer.confirmed
        return self._request(
            utterance, final=False, prefix=confirmed, draft=utterance.stabilizer.latest[len(confirmed) :]
        )

    def events(self) -> list[CaptionEvent]:
        events, self._events = self._events, []
        return events

    @property
    def partial_interval(self) -> float:
        busy = self.config.busy_factor * self._decode_seconds
        return min(self.config.max_partial_interval_s, max(self.config.partial_interval_s, busy))

    @property
    def ending(self) -> bool:
        """end() was called: no more audio is taken."""
        return self._ending

    @property
    def received_seconds(self) -> float:
        """The session's audio clock: seconds of audio received so far."""
        return self._clock_offset + self._segmenter.position / SAMPLE_RATE

    @property
    def backlog_seconds(self) -> float:
        """Audio heard but not yet decoded: ended utterances waiting for their finals, and what
        the open one gained since its latest decode."""
        waiting = sum(u.length for u in self._closing)
        if self._open is not None:
            waiting += self._open.length - self._open.decoded_length
        return waiting / SAMPLE_RATE

    @property
    def final_due(self) -> bool:
        """A partial is being decoded, and a final (or an early final) is now due: the caller
        should withdraw the partial (:meth:`withdraw`) rather than make the final wait for it.
        Its words would be stale by then, or dropped, its utterance being over."""
        if self._in_flight is None or self._in_flight[0].urgent or self._in_flight[0].check is not None:
            return False
        if self._closing:
            return True
        pending_end = self._segmenter.pending_end
        return self._open is not None and pending_end is not None and pending_end != self._open.early_end

    def withdraw(self, request_id: int) -> None:
        """The partial in flight will not be answered (see :attr:`final_due`)."""
        if self._in_flight is not None and (self._in_flight[0].urgent or self._in_flight[0].check is not None):
            raise ValueError(f"decode request {request_id} is not a partial: it cannot be withdrawn")
        self._take_in_flight(request_id)

    @property
    def idle(self) -> bool:
        """Nothing heard and not yet captioned, nothing being decoded."""
        return not self._closing and self._in_flight is None and self._open is None

    @property
    def finished(self) -> bool:
        return self._ending and not self._closing and self._in_flight is None and self._open is None

    # -- internals ---------------------------------------------------------------------------
    def _segment_event(self, event) -> None:
        if isinstance(event, SpeechStart):
            self._open = _Utterance(key=next(self._keys), start=event.start, asked=self.language, language=self.language)
            previous = self._previous
            if previous is not None and event.start - previous.end <= self.config.context_gap_s * SAMPLE_RATE:
                self._open.lead_in = previous
        elif isinstance(event, SpeechChunk):
            assert self._open is not None
            self._open.chunks.append(event.samples)
            self._open.length += len(event.samples)
        elif isinstance(event, SpeechEnd):
            utterance = self._open
            assert utterance is not None
            self._open = None
            utterance.end = max(event.end, utterance.start)
            utterance.cut = event.reason == "max_length"
            if utterance.early_words is not None and utterance.early_end == utterance.end and not self._closing:
                if utterance.early_language is not None and _automatic(utterance.asked):
                    self._fix_language(utterance, utterance.early_language.detected, utterance.early_language.language)
                self._emit_final(utterance, utterance.early_words, utterance.early_cut)  # decoded already
            else:
                self._closing.append(utterance)

    def _request(
        self,
        utterance: _Utterance,
        final: bool,
        prefix: tuple[Word, ...],
        draft: tuple[Word, ...],
        early_end: int | None = None,
    ) -> DecodeRequest:
        audio = utterance.audio()
        utterance.decoded_length = utterance.length
        if early_end is not None:
            audio = audio[: early_end - utterance.start]
        # The segmenter's pause state is the open utterance's; a final's audio is complete.
        speaking = not final and early_end is None and self._segmenter.trailing_silence_ms < self.config.settled_silence_ms
        lead_words: tuple[Word, ...] = ()
        if utterance.lead_in is not None:
            lead_words = utterance.lead_in.words
            audio = np.concatenate([utterance.lead_in.audio, audio])
        language, likely = self._language_for(utterance, len(audio), whole=final or early_end is not None)
        request = DecodeRequest(
            id=next(self._request_ids),
            segment_key=utterance.key,
            audio=audio,
            prefix=lead_words + prefix,
            draft=draft,
            final=final,
            options=DecodeOptions.asking(
                language,
                likely_language=likely,
                context=self.context,
                beam_size=self.config.final_beam_size if final or early_end is not None else 1,
            ),
            context_words=len(lead_words),
            speaking=speaking,
            early_end=early_end,
            first_words=not final and early_end is None and not utterance.shown,
        )
        self._in_flight = (request, utterance)
        return request

    def _tail_request(self, utterance: _Utterance, check: Check, language: str) -> DecodeRequest:
        """The check of a final's words: the utterance's last seconds (at most three quarters of
        it; or the window before ``check.later``'s), decoded alone, greedily, in the language the
        final was heard in; urgent, as the final was, so that words it dropped follow it before
        anything else."""
        audio = utterance.audio()
        end = check.end or len(audio)
        start = 0 if check.whole else max(0, end - self._check_window(audio, 0.75))
        return self._check_request(utterance, audio[start : len(audio) if check.whole else end], replace(check, end=end), language)

    def _tail_checked(self, utterance: _Utterance, check: Check, heard: tuple[Word, ...], language: str) -> str | None:
        """Places the final's last words in a window of its end, or looks further back: the
        outcome to count, or None while the search goes on."""
        checked = coverage(check.words, heard)
        audio = utterance.audio()
        start = max(0, check.end - self._check_window(audio, 0.75))
        if check.whole:
            if checked.outcome == "extended":
                # Placed at the share of the utterance its words take (the read has no times).
                share = len(checked.added) / (len(checked.added) + len(check.words))
                self._emit_dropped(utterance, checked.added, int(share * len(audio)))
                return "tail_extended"
            if checked.outcome == "covered" and echoes(check.words, check.later[0]):
                return "tail_covered"  # the tail only read the final's last words otherwise
            # The read ends where the final does (a model that stops there on long audio), or
            # elsewhere: the final's end is looked for window by window, back from the tail.
            check, checked = replace(check, whole=False), Coverage("unmatched")
        elif checked.outcome == "unmatched" and start > 0:
            check = replace(check, later=(heard, *check.later))
            if len(check.later) == 1:
                # Not in the tail. The model may have ended its text early (Whisper's final once
                # ended at a sentence 14 s before its audio did; read again alone, the whole
                # utterance gave every word): one read of the whole before the walk back.
                self._unchecked.appendleft((utterance, replace(check, whole=True), language))
                return None
        if checked.outcome == "unmatched" and start > 0:
            # Not here: the final may have ended before this window; the previous one overlaps
            # it by a second, so that a word it cuts is whole in one of them.
            back = min(check.end - SAMPLE_RATE, start + SAMPLE_RATE)
            self._unchecked.appendleft((utterance, replace(check, end=back), language))
            return None
        if checked.outcome == "unmatched":
            return "tail_unmatched"
        dropped = checked.added
        for later in check.later:  # each overlaps what is placed so far
            placed = coverage(check.words + dropped, later)
            dropped += placed.added if placed.outcome != "unmatched" else later[1:]
        if dropped:
            self._emit_dropped(utterance, dropped, len(utterance.audio()) - start)
        return "tail_extended" if dropped else "tail_covered"

    def _head_request(self, utterance: _Utterance, words: tuple[Word, ...], cut: bool) -> DecodeRequest:
        """The check of a final's first words, before it is sent: the utterance's first seconds
        decoded alone, as the tail is."""
        audio = utterance.audio()
        # Half the utterance at most: on the whole of a 5.6 s utterance, and on its first 4.1 s,
        # Whisper skipped a first sentence it read in the first 2.8 s.
        window = self._check_window(audio, 0.5)
        return self._check_request(utterance, audio[:window], Check(words, head=True, final_cut=cut), utterance.reported_language)

    def _check_window(self, audio: np.ndarray, share: float) -> int:
        """Samples a check decodes: ``tail_check_s``, but at most ``share`` of the utterance."""
        return int(min(self.config.tail_check_s * SAMPLE_RATE, share * len(audio)))

    def _check_request(self, utterance: _Utterance, audio: np.ndarray, check: Check, language: str) -> DecodeRequest:
        request = DecodeRequest(
            id=next(self._request_ids),
            segment_key=utterance.key,
            audio=audio,
            prefix=(),
            draft=(),
            final=True,
            options=DecodeOptions.asking(language, context=self.context),
            speaking=False,
            check=check,
        )
        self._in_flight = (request, utterance)
        return request

    def _fix_language(self, utterance: _Utterance, was_detected: bool, language: str) -> None:
        """The utterance keeps ``language``; if it was detected (not asked for by name), it is
        also the likely language of the next short utterances."""
        utterance.language = language
        if was_detected:
            self._last_language = language

    def _take_in_flight(self, request_id: int) -> tuple[DecodeRequest, _Utterance]:
        if self._in_flight is None or self._in_flight[0].id != request_id:
            raise ValueError(f"no decode request {request_id} is pending")
        request, utterance = self._in_flight
        self._in_flight = None
        return request, utterance

    def _times(self, utterance: _Utterance, end: int) -> tuple[float, float]:
        return self._clock_offset + utterance.start / SAMPLE_RATE, self._clock_offset + end / SAMPLE_RATE

    def _emit_partial(self, utterance: _Utterance, words: tuple[Word, ...], speaking: bool) -> None:
        confirmed = len(utterance.stabilizer.confirmed)
        if speaking:
            young = utterance.decoded_length < self.config.young_utterance_s * SAMPLE_RATE
            words = words[: max(confirmed, len(words) - (2 if young else 1))]
        if not join_words(words) or words == utterance.shown:
            return
        utterance.shown = words
        # Only what is shown is rewritten: decoding goes on from the model's own words.
        text, stable = write_numbers_partial(
            join_words(words), len(utterance.stabilizer.confirmed_text), utterance.reported_language, self.config.numbers
        )
        if utterance.segment is None:
            utterance.segment = self._next_segment
            self._next_segment += 1
        start, end = self._times(utterance, utterance.start + utterance.decoded_length)
        self._events.append(
            PartialCaption(
                segment=utterance.segment,
                text=text,
                stable=stable,
                start=start,
                end=end,
                language=utterance.reported_language,
            )
        )

    def _emit_final(self, utterance: _Utterance, words: tuple[Word, ...], cut: bool = False) -> None:
        """Sends an utterance's final; ``cut``: its decode stopped short of the model's end."""
        assert utterance.end is not None
        audio = utterance.audio()
        # A final with no word (noise, music) is not checked: there is nothing to place.
        if spoken(words) and len(audio) >= 2 * SAMPLE_RATE and (cut or len(audio) >= self.config.tail_check_min_s * SAMPLE_RATE):
            self._unchecked.append((utterance, Check(words), utterance.reported_language))
        # The next utterance may be decoded after this one; a cut utterance's words may not
        # match its audio exactly (nor may those of a decode that stopped short), and a long one
        # needs no help.
        usable = words and not utterance.cut and not cut and len(audio) <= self.config.context_max_s * SAMPLE_RATE
        self._previous = _Heard(audio, words, utterance.end) if usable else None
        text = write_numbers(join_words(words).strip(), utterance.reported_language, self.config.numbers)
        if not text and utterance.segment is None:
            return  # nothing was heard and nothing was shown: no caption at all
        if utterance.segment is None:
            utterance.segment = self._next_segment
            self._next_segment += 1
        start, end = self._times(utterance, utterance.end)
        self._events.append(FinalCaption(utterance.segment, text, start, end, utterance.reported_language,
                                         audio if self.keep_audio and text else None))

    def _emit_dropped(self, utterance: _Utterance, words: tuple[Word, ...], tail: int) -> None:
        """Sends, as a final of its own, words an utterance's final dropped (found in its last
        ``tail`` samples: they are placed there)."""
        assert utterance.end is not None
        self._previous = None  # the final's words do not match its audio
        text = write_numbers(join_words(words).strip(), utterance.reported_language, self.config.numbers)
        if not text:
            return
        segment, self._next_segment = self._next_segment, self._next_segment + 1
        start, end = self._times(utterance, utterance.end)
        self._events.append(FinalCaption(segment, text, end - tail / SAMPLE_RATE, end, utterance.reported_language))


def _skipped(final: tuple[Word, ...], head: tuple[Word, ...]) -> bool:
    """Whether a final skipped the head of its audio: the head (three words at least) begins
    with two words that are not among the final's first four."""
    first = {text for _, text in spoken(final)[:4]}
    heard = [text for _, text in spoken(head)]
    return len(heard) >= 3 and not first.intersection(heard[:2])


def _in_front(head: tuple[Word, ...], words: tuple[Word, ...]) -> tuple[Word, ...]:
    """``head`` then ``words``, with a space between them where the words are spaced."""
    if head and words and any(w.text[:1].isspace() for w in head) and not words[0].text[:1].isspace():
        words = (Word(" " + words[0].text, words[0].tokens), *words[1:])
    return head + words


def _automatic(language: str) -> bool:
    """Whether the language is still to be detected ("auto", or candidates "en,zh")."""
    return language == "auto" or "," in language
