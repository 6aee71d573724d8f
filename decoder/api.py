"""The one interface every speech-recognition family implements.

A family module (``decoder/moonshine.py``, later ``decoder/whisper.py``) turns 16 kHz float32
audio into a :class:`Hypothesis`. Streaming code above this layer knows nothing of tokens'
meaning: it compares and re-uses whole :class:`Word` units, each carrying the token ids that
spell it, so a confirmed prefix can be fed back to the model as a forced prefix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np

from decoder.batching import ComputeLane
from decoder.context import Context

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Word:
    """One word as the model spelled it: text (with its leading space, if any) and token ids."""

    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Hypothesis:
    """What a model heard in one stretch of audio."""

    words: tuple[Word, ...] = ()
    language: str = "en"
    # Mean log-probability of the tokens the model chose itself (forced prefix excluded).
    avg_logprob: float = 0.0
    # Seconds of compute spent producing this hypothesis (encoder + decoder).
    compute_seconds: float = 0.0
    # The model's own belief that there was no speech at all, where it has one (Whisper).
    no_speech_prob: float | None = None
    # Why the words stop before the model ended them, if they do: "loop" (a repetition guard),
    # "budget" (the most tokens the audio's length allows), "repeated phrase". Never silent:
    # the server counts and logs it for finals.
    cut: str | None = None
    # Why the model's words were not taken for speech, if they were not (the words are then
    # empty): the guards that keep noise and music from becoming captions ("no speech",
    # "unsure", "looping text", "no words", "copies context", "unsure start"). Never silent
    # either: under noise a guard may drop real speech, so the server counts and logs it.
    rejected: str | None = None

    @property
    def text(self) -> str:
        return join_words(self.words)

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(t for w in self.words for t in w.tokens)


@dataclass(frozen=True)
class DecodeOptions:
    """What the caller asks of one decode, carried whole from the publisher (protocol) through
    the session and the engine to the model: a new option is added here, once.

    ``language``: a code the model supports, or None to detect it (among ``candidates`` when
    they are given). ``likely_language``: when detecting, the language the speaker was last
    heard in, kept unless the audio rules it out (short audio is easily taken for a language it
    is not). ``context`` (names, jargon) biases the decoding towards its terms; its text never
    appears in the result unless it was spoken. ``beam_size`` above 1 asks for a beam search
    instead of greedy decoding (the draft is then not used). ``task`` "translate" asks a model
    that can (multilingual Whisper) for the speech in English instead of in its own language."""

    language: str | None = None
    candidates: tuple[str, ...] = ()
    likely_language: str | None = None
    context: Context | None = None
    beam_size: int = 1
    task: str = "transcribe"

    @classmethod
    def asking(
        cls, spec: str | None, *, likely_language: str | None = None, context: Context | None = None, beam_size: int = 1
    ) -> DecodeOptions:
        """Options for a language as publishers and sessions spell it: a code, "auto" or None
        (detect), or candidates to detect among ("en,zh")."""
        language: str | None = None
        candidates: tuple[str, ...] = ()
        if spec is None or spec == "auto":
            pass
        elif "," in spec:
            candidates = tuple(spec.split(","))
        else:
            language = spec
        return cls(language, candidates, likely_language, context, beam_size)

    @property
    def detects(self) -> bool:
        """The language is to be detected rather than given."""
        return self.language is None


def join_words(words: Sequence[Word]) -> str:
    """Text of a word sequence; a prefix of words always gives a prefix of the text."""
    return "".join(w.text for w in words).lstrip()


class Features(Protocol):
    """Whatever a family's encoder produced for one stretch of audio (opaque to callers)."""

    duration: float


FeaturesT = TypeVar("FeaturesT", bound=Features)


class SpeechModel(Protocol[FeaturesT]):
    """A loaded speech-recognition model: a family's module implements it with its own
    features type (what its ``encode`` gives its ``decode``). Implementations must be safe to
    call from several threads at once (ONNX Runtime sessions are)."""

    name: str
    languages: tuple[str, ...]
    lane: ComputeLane  # where its calls take turns; its statistics are the model's compute
    translates: bool  # takes DecodeOptions(task="translate"): speech into English text

    def encode(self, audio: np.ndarray) -> FeaturesT:
        """Run the acoustic encoder on mono float32 audio at 16 kHz."""
        ...

    def decode(
        self, features: FeaturesT, prefix: Sequence[Word] = (), draft: Sequence[Word] = (), options: DecodeOptions = DecodeOptions()
    ) -> Hypothesis:
        """Decode text. ``prefix`` words are forced as they are (already shown as stable), and
        the result begins with them exactly: a token the model adds after them (the comma after
        "Cristo") starts a word of its own, so the words shown as stable stay the same words.
        ``draft`` words are a guess at what follows (an earlier hypothesis): they are checked in
        one pass and kept only as far as the model's own greedy choice agrees, so the result
        is what plain greedy decoding would give, for a fraction of the steps. ``options``: see
        :class:`DecodeOptions`; a family that cannot do what they ask (a language it lacks, a
        beam it has no search for) raises ValueError."""
        ...


def transcribe(
    model: SpeechModel[FeaturesT],
    audio: np.ndarray,
    prefix: Sequence[Word] = (),
    draft: Sequence[Word] = (),
    options: DecodeOptions = DecodeOptions(),
) -> Hypothesis:
    """Encode then decode one stretch of audio; the usual entry point."""
    started = time.perf_counter()
    hyp = model.decode(model.encode(audio), prefix, draft, options)
    return replace(hyp, compute_seconds=time.perf_counter() - started)


@dataclass
class DecodeLimits:
    """Guards shared by every autoregressive family."""

    tokens_per_second: float = 6.5  # fast speech is ~4-5 tokens/s; more means a loop
    min_tokens: int = 8
    max_tokens: int = 224
    # Longest n-gram checked for back-to-back repetition: a whole sentence (Whisper, prompted,
    # was seen to repeat a 20-token sentence three times).
    repeat_ngram_max: int = 48
    repeat_times: int = 3  # a short n-gram seen this many times in a row is a loop
    # ...unless it holds a word and the words so far are few for the audio (under this many
    # tokens a second: speech runs at 2.5-4), so that more speech may still be read: then it
    # takes this many copies. "No, no, no, no, no, that is not what I said" is said; a model
    # that loops has read the audio already, and its extra copies are dropped all the same.
    # Repeats without a letter ("4-4-4-", "...") are what models write on noise: never spared.
    early_tokens_per_second: float = 4.0
    repeat_times_early: int = 8
    repeat_phrase_tokens: int = 4  # an n-gram this long is a loop when seen twice in a row
    repeat_phrase_words: int = 4  # ...and so is a phrase of this many words, case aside
    # Tokens that write only digits and number punctuation (each family fills it from its
    # vocabulary). A repeat made of them is a number ("627,000", "1,111", "1,000,000"), not a
    # loop, until it is this many copies long.
    numeric_tokens: frozenset[int] = frozenset()
    numeric_repeat_times: int = 10
    # Tokens without a letter (digits, punctuation, symbols), from the vocabulary likewise.
    wordless_tokens: frozenset[int] = frozenset()
    # When the first step prefers end-of-text, the runner-up must be at least this likely to be
    # taken as the start of speech (log-probability; noise and music score below -7).
    first_token_min_logprob: float = -5.0
    # ...and the words decoded after such an override must average at least this.
    override_min_avg_logprob: float = -1.0

    def budget(self, seconds: float) -> int:
        return int(min(self.max_tokens, max(self.min_tokens, seconds * self.tokens_per_second)))

    def loop_start(self, tokens: Sequence[int], budget: int | None = None) -> int | None:
        """Where the loop ``tokens`` ends in begins its second copy (see :func:`repetition_start`).
        With the decode's token ``budget`` (which says how long the audio is), a short repeat
        early in the audio needs :attr:`repeat_times_early` copies."""
        early = budget is not None and len(tokens) < budget * self.early_tokens_per_second / self.tokens_per_second
        return repetition_start(
            tokens, self.repeat_ngram_max, self.repeat_times, self.repeat_phrase_tokens, self.numeric_tokens, self.numeric_repeat_times,
            wordless=self.wordless_tokens if early else None, word_times=self.repeat_times_early,
        )

    def cut_loop(self, forced: Sequence[int], chosen: list[int], scores: list[float], budget: int | None = None) -> bool:
        """If ``forced + chosen`` ends in a loop, drop the repeats from ``chosen`` and their
        ``scores`` (in place) and return True: decoding should stop."""
        loop_at = self.loop_start([*forced, *chosen], budget)
        if loop_at is None:
            return False
        del chosen[max(0, loop_at - len(forced)) :]
        del scores[len(chosen) :]
        return True

    def cut_repeated_phrase(self, words: Sequence[Word], chosen: list[int], scores: list[float]) -> tuple[Word, ...]:
        """The new ``words`` (decoded as ``chosen``) up to a phrase they say twice in a row (see
        :func:`repeated_phrase_start`); ``chosen`` and ``scores`` are cut to match, in place.
        Only the new words are searched: a lead-in read again is the session's to drop, keeping
        what follows it."""
        at = repeated_phrase_start(words, self.repeat_phrase_words)
        if at is None:
            return tuple(words)
        kept = tuple(words[:at])
        del chosen[sum(len(w.tokens) for w in kept) :]
        del scores[len(chosen) :]
        return kept


_NUMERIC = frozenset("0123456789,")


def with_vocabulary(limits: DecodeLimits, pieces: Sequence[str | None]) -> DecodeLimits:
    """``limits`` with the token classes its guards need, from a vocabulary's token texts
    (``pieces[id]``; None for special tokens and bytes that are no character alone): numbers
    (digits and thousands separators only, spaces aside) and tokens without a letter (bytes
    alone count as such: "♪" on music is three of them)."""
    numeric = frozenset(i for i, piece in enumerate(pieces) if piece and piece.strip() and set(piece.strip()) <= _NUMERIC)
    wordless = frozenset(i for i, piece in enumerate(pieces) if piece is None or not any(c.isalpha() for c in piece))
    return replace(limits, numeric_tokens=numeric, wordless_tokens=wordless)


def repeated_phrase_start(words: Sequence[Word], min_words: int = 4) -> int | None:
    """Where the first phrase of ``min_words`` or more words said twice back to back (case and
    punctuation aside) begins its second copy, reading from the start; else None. Whisper
    re-reads what it has written with the first word recased ("However, due to the slow
    communication channels, however, due to the slow communication channels,"): other tokens,
    so the token loop guard does not see it."""
    keyed = [(i, key) for i, w in enumerate(words) if (key := "".join(c for c in w.text.casefold() if c.isalnum()))]
    keys = [key for _, key in keyed]
    for end in range(2 * min_words, len(keys) + 1):
        for n in range(min_words, end // 2 + 1):
            if keys[end - 2 * n : end - n] == keys[end - n : end]:
                return keyed[end - n][0]
    return None


def _periodic(tail: tuple[int, ...]) -> bool:
    """Whether ``tail`` is a shorter n-gram repeated."""
    n = len(tail)
    return any(n % p == 0 and tail == tail[:p] * (n // p) for p in range(1, n // 2 + 1))


def repetition_start(
    tokens: Sequence[int],
    max_n: int = 48,
    times: int = 3,
    phrase_n: int = 4,
    numeric: frozenset[int] = frozenset(),
    numeric_times: int = 10,
    wordless: frozenset[int] | None = None,
    word_times: int = 8,
) -> int | None:
    """If ``tokens`` ends in a loop, return where the loop's second copy starts (keep one copy,
    drop the rest); else None. A loop is an n-gram repeated ``times`` times back to back, or,
    for n of ``phrase_n`` tokens or more, repeated even once: people say "very very", but a
    whole phrase said twice in a row is the model re-reading audio it has already transcribed.
    An n-gram made only of ``numeric`` tokens is a number's digits ("000" in "627,000"): a loop
    only at ``numeric_times`` copies (a model that loops on digits writes far more). Given the
    ``wordless`` tokens (there is audio still to read), a short n-gram with a word in it is a
    loop only at ``word_times`` copies ("no, no, no, no")."""
    length = len(tokens)
    for n in range(1, max_n + 1):
        copies = times if n < phrase_n else 2
        if n * copies > length:
            break
        tail = tuple(tokens[length - n :])
        if n >= phrase_n and _periodic(tail):
            continue  # "no, no, no, no": a short n-gram's copies, which its own rule judges
        spared = copies
        if numeric and all(t in numeric for t in tail):
            spared = max(copies, numeric_times)
        elif wordless is not None and n < phrase_n and not all(t in wordless for t in tail):
            spared = max(copies, word_times)
        if spared > copies:
            copies = spared
            if n * copies > length:
                continue
        if all(tuple(tokens[length - k * n : length - (k - 1) * n]) == tail for k in range(2, copies + 1)):
            return length - (copies - 1) * n
    return None
