"""A scripted speech model: the test double for logic tests (no ONNX, deterministic, fast).

Audio for it is made by :func:`speak`: each word is a voiced burst (a harmonic tone, 0.3 s) whose
pitch period names the word, words are 0.1 s apart, utterances a pause apart. webrtcvad and the
segmenter take these bursts for speech (the harmonics light up its bands one burst at a time),
so everything above the model runs as it does in production: VAD, session, engine, server.

:class:`ScriptedModel` implements :class:`decoder.api.SpeechModel` by hearing the bursts back:
it finds the voiced runs in the audio it is given, reads each run's period, and returns the
word it names. So what it hears depends only on the audio, as a real model's does: a partial
decode of the first second hears the words of the first second, a decode with the previous
utterance in front hears that one's words first. The forced ``prefix`` is kept exactly (the
result begins with it; what was heard after as many words follows), the ``draft`` changes
nothing (as the real contract says), and any beam gives the same words. Anything that is not
a burst of a known pitch is heard as nothing: silence, noise, music and nearly all real speech
(a voiced stretch longer than a burst is no word; a short steady vowel may pass for one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from decoder.api import SAMPLE_RATE, DecodeOptions, Hypothesis, Word
from decoder.batching import ComputeLane

VOCABULARY = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)
# Pitch period of each word's burst, in samples at 16 kHz: 60 (267 Hz) up to 180 (89 Hz).
PERIODS = tuple(60 + 8 * index for index in range(len(VOCABULARY)))

WORD_S = 0.3  # one word's burst
GAP_S = 0.1  # between the words of an utterance (far below the segmenter's end silence)
PAUSE_S = 1.0  # between utterances (above its end silence, 0.5 s by default)
LEVEL = 0.3  # peak amplitude of a burst

_FRAME = SAMPLE_RATE // 100  # 10 ms: the resolution at which bursts are found
_MIN_WORD_FRAMES = 8  # a run shorter than 80 ms is a click, not a word
_MAX_WORD_FRAMES = int(WORD_S * 100) + 5  # a longer run is not one burst (music, speech)
_VOICED_RMS = 0.02


def burst(word: str, seconds: float = WORD_S) -> np.ndarray:
    """One word: harmonics of its pitch up to 4 kHz (a sawtooth-like buzz), 20 ms ramps."""
    period = PERIODS[VOCABULARY.index(word)]
    length = int(seconds * SAMPLE_RATE)
    t = np.arange(length)
    f0 = SAMPLE_RATE / period
    wave = sum(np.sin(2 * np.pi * f0 * k * t / SAMPLE_RATE) / k for k in range(1, int(4000 / f0) + 1))
    ramp = np.minimum(1.0, np.minimum(t, length - t) / (0.02 * SAMPLE_RATE))
    return (LEVEL * wave / np.max(np.abs(wave)) * ramp).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)


def utterance(text: str, gap_s: float = GAP_S) -> np.ndarray:
    """The words of ``text`` (vocabulary words, space-separated), ``gap_s`` apart."""
    words = text.split()
    parts: list[np.ndarray] = []
    for index, word in enumerate(words):
        parts.append(burst(word))
        if index < len(words) - 1:
            parts.append(silence(gap_s))
    return np.concatenate(parts)


def speak(*texts: str, lead_s: float = 0.5, pause_s: float = PAUSE_S) -> np.ndarray:
    """A stream: ``lead_s`` of silence, then each text as one utterance, each followed by
    ``pause_s`` of silence (so the last one ends too)."""
    parts = [silence(lead_s)]
    for text in texts:
        parts += [utterance(text), silence(pause_s)]
    return np.concatenate(parts)


def script(count: int, start: int = 0) -> str:
    """``count`` vocabulary words in order from ``start``, wrapping round: a long text."""
    return " ".join(VOCABULARY[(start + i) % len(VOCABULARY)] for i in range(count))


def word(text: str) -> Word:
    """A word as the scripted model spells it: a leading space, one token per vocabulary word."""
    return Word(" " + text, (VOCABULARY.index(text) + 1,))


def hear(audio: np.ndarray) -> tuple[str, ...]:
    """The vocabulary words spoken in ``audio``, in order."""
    frames = len(audio) // _FRAME
    if not frames:
        return ()
    rms = np.sqrt(np.mean(audio[: frames * _FRAME].reshape(frames, _FRAME).astype(np.float64) ** 2, axis=1))
    voiced = np.concatenate([[False], rms > _VOICED_RMS, [False]])
    edges = np.flatnonzero(voiced[1:] != voiced[:-1])
    heard = []
    for begin, end in zip(edges[::2], edges[1::2]):
        if _MIN_WORD_FRAMES <= end - begin <= _MAX_WORD_FRAMES:
            name = _word_of(audio[begin * _FRAME : end * _FRAME])
            if name is not None:
                heard.append(name)
    return tuple(heard)


def _correlation(x: np.ndarray, lag: int) -> float:
    a, b = x[:-lag], x[lag:]
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denominator) if denominator else 0.0


def _word_of(run: np.ndarray) -> str | None:
    """The word whose period the run repeats with: the shortest period it matches (a period's
    multiples match too), if the run is not also alike at half of it (low-pass noise is)."""
    x = run.astype(np.float64)
    for name, period in zip(VOCABULARY, PERIODS):
        if len(x) > 2 * period and _correlation(x, period) > 0.9 and _correlation(x, period // 2) < 0.3:
            return name
    return None


@dataclass(frozen=True)
class Features:
    duration: float
    words: tuple[str, ...]


@dataclass(frozen=True)
class Decode:
    """One call of :meth:`ScriptedModel.decode`, as recorded."""

    duration: float
    prefix: tuple[str, ...]
    options: DecodeOptions
    result: tuple[str, ...]


@dataclass
class ScriptedModel:
    """A :class:`decoder.api.SpeechModel` that hears :func:`speak`'s words. Thread-safe.

    ``fails``: decodes whose heard words it returns True for raise RuntimeError, as a model
    that crashed would. ``stops_after``: a decode returns at most this many words (prefix
    included) on more than ``stops_over_s`` of audio, as a model that ends its text early does;
    with ``stop_reason`` it says why, as a loop guard or the token budget would; with
    ``stops_in_beam`` only a beam search stops (greedy decoding reads every word), as Whisper's
    final once ended 14 s early where reading the audio again did not. ``skips_first``: a decode of more than ``skips_over_s``
    of audio with no forced prefix leaves out its first words, as Whisper once skipped a
    sentence. ``compute_s``: each encode holds the lane (decoder/batching.py) this long. Every
    decode is recorded in :attr:`decodes`."""

    name: str = "scripted-en"
    languages: tuple[str, ...] = ("en",)
    fails: Callable[[tuple[str, ...]], bool] | None = None
    stops_after: int | None = None
    stop_reason: str | None = None
    stops_over_s: float = 0.0
    stops_in_beam: bool = False
    skips_first: int = 0
    skips_over_s: float = 0.0
    decodes: list[Decode] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    compute_s: float = 0.0  # each encode holds the model's lane this long, as a slow model would
    # Takes task "translate": it "translates" by writing the words it hears in capitals.
    translates: bool = False
    lane: ComputeLane = field(default_factory=ComputeLane, repr=False)

    def encode(self, audio: np.ndarray) -> Features:
        with self.lane.turn("encoder"):
            if self.compute_s:
                time.sleep(self.compute_s)
            return Features(len(audio) / SAMPLE_RATE, hear(audio))

    def decode(
        self, features: Features, prefix: Sequence[Word] = (), draft: Sequence[Word] = (), options: DecodeOptions = DecodeOptions()
    ) -> Hypothesis:
        if options.language is not None and options.language not in self.languages:
            raise ValueError(f"{self.name} does not support language {options.language!r}")
        if options.task == "translate" and not self.translates:
            raise ValueError(f"{self.name} does not translate")
        if self.fails is not None and self.fails(features.words):
            raise RuntimeError(f"scripted failure on {' '.join(features.words)!r}")
        words = tuple(prefix) + tuple(word(w) for w in features.words[len(prefix) :])
        if not prefix and features.duration > self.skips_over_s:
            words = words[self.skips_first :]
        cut = None
        stops = self.stops_after is not None and len(words) > self.stops_after and features.duration > self.stops_over_s
        if stops and (options.beam_size > 1 or not self.stops_in_beam):
            words, cut = words[: self.stops_after], self.stop_reason
        if options.task == "translate":
            words = tuple(Word(w.text.upper(), w.tokens) for w in words)
        with self._lock:
            self.decodes.append(Decode(features.duration, tuple(w.text.strip() for w in prefix), options, tuple(w.text.strip() for w in words)))
        return Hypothesis(words=words, language=options.language or self.languages[0], cut=cut)
