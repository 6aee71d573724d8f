"""Whisper (multilingual encoder-decoder on log-mel features), converted to ONNX by
``decoder/whisper_convert.py``: front end, tokenizer, language identification, the prompt, its
decoder graph as :class:`decoder.loop.BatchGraph` (greedy decoding with draft verification for
partials and the batched beam search for finals run in ``decoder/loop.py``), and the guards
Whisper needs on non-speech.

Streaming decodes short stretches many times, so the encoder runs on a window just long enough
for the audio (whole 5-second steps up to Whisper's 30 s) rather than always on 30 s: the
positional encodings are sliced to the window.

Tensors are passed with I/O binding, as in ``decoder/moonshine.py``: the cross-attention keys
and values and the self-attention cache stay on the model's device between calls, and only the
mel features (in) and the logits (out) cross to the host.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from decoder.api import SAMPLE_RATE, DecodeLimits, DecodeOptions, Hypothesis, Word, with_vocabulary
from decoder.batching import ComputeLane
from decoder.context import Context
from decoder.loop import Decoded, beam_search, greedy
from decoder.runtime import RuntimeOptions, create_session

log = logging.getLogger(__name__)

N_FFT, HOP = 400, 160
CHUNK_SECONDS = 30
WINDOW_STEP_SECONDS = 5
# Prompt budget: Whisper reads at most half its 448-token context as previous text.
MAX_PROMPT_TOKENS = 223
# Whisper's own thresholds for "this was not speech" and for looping output.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# Measured on the shared recordings and generated non-speech: text this unsure, with nothing
# confirmed before it, is not shown. Speech averages above -1.4 per token in its first one or
# two seconds and above -0.65 over four seconds or more; noise scores -1.5 to -2.2, and music
# -1.9 over 10 s but -1.44 over 20 s (no-speech probability 0.47: Whisper's own rule misses it).
UNSURE_LOGPROB = -1.5
UNSURE_LOGPROB_LONG = -1.0
LONG_AUDIO_S = 4.0
# The language detected for an utterance with less than this probability, and a reading in it
# below UNSURE_LANGUAGE_LOGPROB, is no caption: under loud noise (pink noise 5 dB below the
# speech) a Japanese sentence's first half was taken for English (0.23) and read as English
# words (-1.45 per token: above the plain unsure rule for short audio, -1.5), where in Japanese
# it read as nothing. Speech in a language detected for sure reads far better than that.
UNSURE_LANGUAGE_PROB = 0.5
UNSURE_LANGUAGE_LOGPROB = -1.0
# A beam search on long audio can drop a whole sentence (it ranks by summed log-probabilities,
# and a sentence left out costs less than it adds): a 17 s utterance of three sentences came
# back without its middle one. From this long, the beam's reading is checked against greedy
# decoding's (one extra pass where they agree), which is taken instead if it holds a run of
# SKIPPED_RUN_WORDS or more words the beam left out and that do not repeat the beam's words
# around the gap (greedy decoding reads a sentence twice where the beam does not).
SKIP_CHECK_S = 8.0
SKIPPED_RUN_WORDS = 3
# A speaker's likely language is kept unless the audio makes it less probable than this.
# Measured on 1.5-4 s stretches of the shared recordings: the top guess was wrong on 14% of
# 2 s stretches, but the language spoken never scored below 0.0047; another language scored
# below 0.003 on 70% of 2 s stretches and 83% of 4 s ones, so a real switch is soon followed.
KEEP_LANGUAGE_MIN_PROB = 0.003


# -- front end ------------------------------------------------------------------------------
def _hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as Whisper's filters use."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    mels = frequencies / (200.0 / 3)
    log_region = frequencies >= 1000.0
    mels[log_region] = 15.0 + np.log(frequencies[log_region] / 1000.0) / (np.log(6.4) / 27.0)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    frequencies = mels * (200.0 / 3)
    log_region = mels >= 15.0
    frequencies[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return frequencies


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Triangular filters on the mel scale, area-normalised (librosa's ``norm="slaney"``)."""
    fft_frequencies = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], n_mels + 2))
    widths = np.diff(edges)
    slopes = edges[:, None] - fft_frequencies[None, :]
    lower = -slopes[:-2] / widths[:-1, None]
    upper = slopes[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio: np.ndarray, n_mels: int = 80, seconds: float = CHUNK_SECONDS) -> np.ndarray:
    """Whisper's log-mel spectrogram of ``audio`` padded with silence to ``seconds``:
    ``[n_mels, 100 * seconds]``."""
    samples = int(seconds * SAMPLE_RATE)
    audio = np.asarray(audio, dtype=np.float32)[:samples]
    audio = np.pad(audio, (0, samples - len(audio)))
    padded = np.pad(audio, N_FFT // 2, mode="reflect")  # centred frames
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = mel_filters(n_mels) @ power[:-1].T.astype(np.float32)  # the last frame is dropped, as in Whisper
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def window_seconds(duration: float) -> float:
    """The encoder window for ``duration`` seconds of audio: whole 5 s steps, at most 30."""
    return float(min(CHUNK_SECONDS, WINDOW_STEP_SECONDS * max(1, int(np.ceil((duration + 0.5) / WINDOW_STEP_SECONDS)))))


# -- tokenizer ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable characters standing for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def _unspaced(char: str) -> bool:
    """Scripts written without spaces between words (each character is its own unit)."""
    name = unicodedata.name(char, "")
    return any(script in name for script in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI"))


class WhisperTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer  # the same BPE implementation the checkpoint was made with

        self._tokenizer = Tokenizer.from_file(str(path))
        decoder = _byte_decoder()
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.token_bytes: list[bytes] = []
        for token in range(size):
            piece = self._tokenizer.id_to_token(token) or ""
            self.token_bytes.append(bytes(decoder[c] for c in piece) if all(c in decoder for c in piece) else b"")
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.transcribe = self._special("<|transcribe|>")
        self.translate = self._special("<|translate|>")
        self.prev = self._special("<|startofprev|>")
        self.no_speech = self._tokenizer.token_to_id("<|nospeech|>") or self._special("<|nocaptions|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        self.languages: dict[str, int] = {}
        for token in range(self.sot + 1, self.transcribe):
            name = self._tokenizer.id_to_token(token)
            if name and name.startswith("<|") and name.endswith("|>") and name not in ("<|translate|>",):
                self.languages[name[2:-2]] = token

    def _special(self, name: str) -> int:
        token: int | None = self._tokenizer.token_to_id(name)
        if token is None:
            raise ValueError(f"not a Whisper tokenizer: it has no {name}")
        return token

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def text(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes[t] for t in tokens if t < self.eot).decode("utf-8", errors="replace")

    def words(self, tokens: Sequence[int]) -> tuple[Word, ...]:
        """Group tokens into words: a word starts at a token beginning with a space, or at each
        character of scripts without spaces; a word never ends inside a UTF-8 character."""
        groups: list[list[int]] = []
        pending = b""
        for token in tokens:
            if token >= self.eot:
                continue
            data = self.token_bytes[token]
            try:
                complete = pending.decode("utf-8") if pending else ""
            except UnicodeDecodeError:
                complete = None
            starts_word = data[:1] == b" " or (
                complete is not None and bool(complete) and (_unspaced(complete[-1]) or _unspaced(data.decode("utf-8", "ignore")[:1] or " "))
            )
            if groups and complete is not None and starts_word:
                groups.append([token])
                pending = data
            elif groups:
                groups[-1].append(token)
                pending += data
            else:
                groups.append([token])
                pending = data
        return tuple(Word(self.text(group), tuple(group)) for group in groups)


# -- model ------------------------------------------------------------------------------------
# The decoder's self-attention cache by input name: on the device, or on the host once cut or selected.
WhisperCache = dict[str, ort.OrtValue | np.ndarray]


def _host(value: ort.OrtValue | np.ndarray) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


@dataclass
class WhisperFeatures:
    cross: dict[str, ort.OrtValue]  # per decoder layer: cross-attention keys and values, on the device
    duration: float
    no_speech_prob: float | None = None


class WhisperModel:
    """The Whisper family behind :class:`decoder.api.SpeechModel`."""

    def __init__(self, name: str, directory: Path, runtime: RuntimeOptions = RuntimeOptions(), limits: DecodeLimits | None = None):
        self.name = name
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        self.encoder, self.device = create_session(directory / "encoder.onnx", runtime)
        self.decoder, _ = create_session(directory / "decoder.onnx", runtime)
        self.tokenizer = WhisperTokenizer(directory / "tokenizer.json")
        self.n_mels = int(config.get("n_mels", 80))
        self.layers, self.heads = int(config["n_text_layers"]), int(config["n_text_heads"])
        self.head_dim = int(config["n_text_state"]) // self.heads
        # Chinese and Japanese take more tokens per second of speech than English, and repeat
        # single characters legitimately (短短, 哈哈哈): a one-token loop needs more copies.
        pieces = [piece.decode("utf-8", errors="replace") if piece else None for piece in self.tokenizer.token_bytes]
        self.limits = with_vocabulary(limits or DecodeLimits(tokens_per_second=12.0, min_tokens=12, repeat_times=5), pieces)
        # Encoder window at least this long (30: always Whisper's full window, as CTranslate2).
        self.min_window_s = 0.0
        self.languages = tuple(self.tokenizer.languages)
        self.multilingual = len(self.languages) > 1
        self.translates = self.multilingual
        self.eot = self.tokenizer.eot
        vocab = int(config.get("n_vocab", len(self.tokenizer.token_bytes)))
        self._suppress = np.zeros(vocab, dtype=np.float32)
        self._suppress[[t for t in config.get("suppress_ids", []) if t < vocab]] = -np.inf
        self._suppress[self.tokenizer.eot + 1 :] = -np.inf  # special and timestamp tokens: never text
        self._suppress_begin = [t for t in config.get("suppress_ids_begin", [220, self.tokenizer.eot]) if t < vocab]
        self._cross_names = [f"cross_{kind}_{layer}" for layer in range(self.layers) for kind in "kv"]
        self._cache_outputs = [f"new_self_{kind}_{layer}" for layer in range(self.layers) for kind in "kv"]
        # Calls take turns, finals' first (decoder/batching.py). Steps of different streams
        # are not batched yet: the graph takes one offset for all its rows.
        self.lane = ComputeLane(runtime.calls_at_once)

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, audio: np.ndarray) -> WhisperFeatures:
        duration = len(audio) / SAMPLE_RATE
        mel = log_mel(audio, self.n_mels, max(self.min_window_s, window_seconds(duration)))[None]
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("mel", mel)
        for name in self._cross_names:
            binding.bind_output(name, self.device.kind, self.device.index)
        with self.lane.turn("encoder"):
            self.encoder.run_with_iobinding(binding)
        return WhisperFeatures(dict(zip(self._cross_names, binding.get_outputs())), duration)

    # -- decoder graph (decoder/loop.py's BatchGraph) -----------------------------------------
    def run(
        self, features: WhisperFeatures, rows: Sequence[Sequence[int]], cache: WhisperCache | None, offset: int
    ) -> tuple[np.ndarray, WhisperCache]:
        """The decoder on token ``rows`` of one length (``cache`` holds one cache per row) after
        ``offset`` cached positions. The audio's keys and values are shared by every row by
        broadcasting, not copied; the grown cache stays on the device."""
        if cache is None:
            empty = np.zeros((len(rows), self.heads, 0, self.head_dim), dtype=np.float32)
            cache = {f"self_{kind}_{layer}": empty for layer in range(self.layers) for kind in "kv"}
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("tokens", np.array(rows, dtype=np.int64))
        binding.bind_cpu_input("offset", np.array([offset], dtype=np.int64))
        for name, value in (*cache.items(), *features.cross.items()):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self._cache_outputs:
            binding.bind_output(name, self.device.kind, self.device.index)
        with self.lane.turn("decoder prompt" if offset == 0 else "decoder step", rows=len(rows)):
            self.decoder.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        grown: WhisperCache = {name.replace("new_", ""): value for name, value in zip(self._cache_outputs, outputs[1:])}
        logits = outputs[0].numpy()
        peak = logits.max(axis=-1, keepdims=True)
        return logits - (peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))), grown

    def cut(self, cache: WhisperCache, length: int) -> WhisperCache:
        """One trip through host memory per decode, and only when the draft was wrong."""
        return {name: np.ascontiguousarray(_host(value)[:, :, :length]) for name, value in cache.items()}

    def select(self, cache: WhisperCache, rows: Sequence[int]) -> WhisperCache:
        return {name: _host(value)[list(rows)] for name, value in cache.items()}

    def allowed(self, log_probs: np.ndarray, at_start: bool) -> np.ndarray:
        """Never special or timestamp tokens; not a space or end-of-text first."""
        log_probs = log_probs + self._suppress
        if at_start:
            log_probs[self._suppress_begin] = -np.inf
        return log_probs

    def first_step(self, log_probs: np.ndarray) -> tuple[np.ndarray, bool] | None:
        """No rule of its own: :meth:`allowed` already keeps end-of-text from coming first."""
        return log_probs, False

    def detect_language(
        self, features: WhisperFeatures, candidates: Sequence[str] | None = None, likely: str | None = None
    ) -> tuple[str, float]:
        """The most likely language (among ``candidates``, if given) and its probability; or
        ``likely``, if the audio leaves it at least :data:`KEEP_LANGUAGE_MIN_PROB`."""
        if not self.multilingual:
            return self.languages[0], 1.0
        log_probs = self.run(features, [[self.tokenizer.sot]], None, 0)[0][0]
        names = [c for c in (candidates or self.languages) if c in self.tokenizer.languages] or list(self.languages)
        scores = np.array([log_probs[-1, self.tokenizer.languages[n]] for n in names])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if likely in names and probs[names.index(likely)] >= KEEP_LANGUAGE_MIN_PROB:
            return likely, float(probs[names.index(likely)])
        best = int(probs.argmax())
        return names[best], float(probs[best])

    def _prompt(self, context: Context | None) -> list[int]:
        """The context as Whisper's "previous text": it steers spelling, and is never output."""
        if context is None:
            return []
        # Free text already holds its terms; terms given apart from the text are added to it.
        extra = [t.text for t in context.terms if t.text not in context.text]
        text = " ".join(part for part in (context.text, ", ".join(extra)) if part)
        tokens = self.tokenizer.encode(" " + text.strip())[-MAX_PROMPT_TOKENS:]
        return [self.tokenizer.prev, *tokens] if tokens else []

    def decode(
        self, features: WhisperFeatures, prefix: Sequence[Word] = (), draft: Sequence[Word] = (), options: DecodeOptions = DecodeOptions()
    ) -> Hypothesis:
        if options.beam_size < 1:
            raise ValueError(f"beam_size must be 1 (greedy) or more (a beam search), not {options.beam_size}")
        if options.language is not None and options.language not in self.tokenizer.languages:
            raise ValueError(f"{self.name} does not know language {options.language!r}")
        if options.task not in ("transcribe", "translate") or (options.task == "translate" and not self.multilingual):
            raise ValueError(f"{self.name} does not {options.task} (multilingual Whisper models translate speech into English)")
        started = time.perf_counter()
        language, language_prob = options.language, 1.0
        if language is None:
            language, language_prob = self.detect_language(features, options.candidates or None, options.likely_language)
            if language == options.likely_language:
                language_prob = 1.0  # kept on purpose (short audio is easily taken for another language): not a guess
        context = options.context
        start = [*self._prompt(context), self.tokenizer.sot]
        if self.multilingual:
            start.append(self.tokenizer.languages[language])
        start += [self.tokenizer.translate if options.task == "translate" else self.tokenizer.transcribe, self.tokenizer.no_timestamps]
        forced = [t for w in prefix for t in w.tokens]
        budget = self.limits.budget(features.duration)
        proposed = [t for w in draft for t in w.tokens]
        found = beam_search(self, features, start, forced, budget, options.beam_size, self.limits) if options.beam_size > 1 else None
        if found is not None and features.duration >= SKIP_CHECK_S:
            # The beam's reading as the draft: greedy decoding costs one pass where they agree.
            plain = greedy(self, features, start, forced, found.tokens, budget, self.limits)
            skipped = skipped_run(self.tokenizer.words(found.tokens), self.tokenizer.words(plain.tokens))
            # Only a reading the guards below would keep: under loud noise greedy decoding's
            # longer reading was too unsure to show, where the beam's short one was not.
            if skipped and plain.tokens and self._judged(plain, start, forced, features.duration, context, language_prob)[2] is None:
                log.info("beam search left out %r (%.1f s of audio): greedy decoding's reading taken", skipped, features.duration)
                found = plain
        found = found or greedy(self, features, start, forced, proposed, budget, self.limits)
        heard = self.tokenizer.words(found.tokens)
        words = self.limits.cut_repeated_phrase(heard, found.tokens, found.scores)
        cut = "repeated phrase" if len(words) < len(heard) else None if found.stopped == "end" else found.stopped
        no_speech, average, rejected = self._judged(found, start, forced, features.duration, context, language_prob)
        if rejected is not None:
            words, average, cut = (), 0.0, None
        return Hypothesis(
            words=(*prefix, *words),
            language=language,
            avg_logprob=average,
            compute_seconds=time.perf_counter() - started,
            no_speech_prob=no_speech,
            cut=cut,
            rejected=rejected,
        )

    def _judged(
        self, found: Decoded, start: list[int], forced: list[int], seconds: float, context: Context | None, language_prob: float = 1.0
    ) -> tuple[float, float, str | None]:
        """A reading's no-speech probability, its mean log-probability per token, and why the
        guards drop it (None: they keep it). A translation (its task token in ``start``) is of
        audio already taken for speech: only the guards against loops and wordless text apply."""
        no_speech = float(np.exp(found.first_call[start.index(self.tokenizer.sot), self.tokenizer.no_speech]))
        average = float(np.mean(found.scores)) if found.scores else 0.0
        text = self.tokenizer.text(found.tokens)
        translating = self.tokenizer.translate in start
        rejected = (_rejected(self.tokenizer.text(forced + found.tokens), text, average, no_speech, bool(forced), seconds, context, translating,
                              language_prob) if found.tokens else None)
        return no_speech, average, rejected


def skipped_run(beam: Sequence[Word], plain: Sequence[Word], run: int = SKIPPED_RUN_WORDS) -> str | None:
    """Words ``plain`` has and ``beam`` left out: the first gap of ``run`` or more words (more
    than ``beam`` has in their place) whose words mostly do not appear in ``beam`` around it (a
    repeat of the neighbouring words is what the beam is right to leave out); or None."""
    a = ["".join(_plain_words(w.text)) for w in beam]
    b = ["".join(_plain_words(w.text)) for w in plain]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag not in ("insert", "replace") or (j2 - j1) - (i2 - i1) < run:
            continue
        gap = b[j1:j2]
        around = set(a[max(0, i1 - len(gap)) : i2 + len(gap)])
        if sum(word in around for word in gap) < 0.6 * len(gap):
            return "".join(w.text for w in plain[j1:j2]).strip()
    return None


def _copies_prompt(text: str, context: Context | None) -> bool:
    """Whisper given a prompt and no speech reads the prompt back: text whose words all come,
    in order, from the prompt, and more than one term or four words of it, is that, never a
    caption. (A speaker who says just one of the terms is still heard.)"""
    if context is None:
        return False
    words = _plain_words(text)
    prompt = _plain_words(f"{context.text} {' '.join(t.text for t in context.terms)}")
    if not words:
        return False
    remaining = iter(prompt)
    if not all(word in remaining for word in words):
        return False
    joined = f" {' '.join(words)} "
    terms = sum(f" {' '.join(_plain_words(t.text))} " in joined for t in context.terms)
    return len(words) >= 4 or terms >= 2


def _plain_words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() else " " for c in text).split()


def _rejected(
    text: str, chosen: str, average: float, no_speech: float, forced: bool, seconds: float, context: Context | None, translating: bool = False,
    language_prob: float = 1.0,
) -> str | None:
    """Why words are not taken for speech, or None. Whisper's rules: the model itself says there
    was no speech, or the text loops; and on music it writes "..." or "♪": no words, no caption.
    This is what keeps "Thanks for watching!" off silent stretches."""
    if not translating and no_speech > NO_SPEECH_THRESHOLD and average < LOGPROB_THRESHOLD:
        return "no speech"
    if not translating and not forced and average < (UNSURE_LOGPROB_LONG if seconds >= LONG_AUDIO_S else UNSURE_LOGPROB):
        return "unsure"
    if not translating and not forced and language_prob < UNSURE_LANGUAGE_PROB and average < UNSURE_LANGUAGE_LOGPROB:
        return "unsure language"
    if _compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD:
        return "looping text"
    if not any(char.isalnum() for char in chosen):
        return "no words"
    if _copies_prompt(chosen, context):
        return "copies context"
    return None


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if len(data) > 40 else 0.0
