"""Moonshine (encoder-decoder on the raw 16 kHz waveform), greedy decoding with a KV cache.

The decoder is the "merged" export: one graph with an ``If`` on ``use_cache_branch``. The first
call (no cache) takes BOS plus any forced prefix at once and returns the self-attention cache
and the cross-attention cache; later calls take one token and the caches. The caches stay in
ONNX Runtime values bound with I/O binding, so on a GPU they never leave the device; only the
logits come back to the host.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from decoder.api import SAMPLE_RATE, DecodeLimits, Hypothesis, Word, repetition_start
from decoder.runtime import RuntimeOptions, create_session

log = logging.getLogger(__name__)

BOS, EOS = 1, 2
_SPACE = "\u2581".encode()  # SentencePiece's word-start marker


class MoonshineTokenizer:
    """``tokenizer.bin``: token pieces in id order, each length-prefixed (1 byte below 128,
    else 2 bytes: low 7 bits first). Byte-fallback pieces are stored as the raw byte."""

    def __init__(self, path: Path):
        raw = path.read_bytes()
        pieces: list[bytes] = []
        i = 0
        while i < len(raw):
            first = raw[i]
            if first < 128:
                length, i = first, i + 1
            else:
                length, i = raw[i + 1] * 128 + first - 128, i + 2
            pieces.append(raw[i : i + length])
            i += length
        self.pieces = pieces
        self.special = {0, BOS, EOS}

    def __len__(self) -> int:
        return len(self.pieces)

    def words(self, tokens: Sequence[int]) -> tuple[Word, ...]:
        """Group tokens into words: a word starts at a piece that begins with the space mark."""
        groups: list[list[int]] = []
        for token in tokens:
            if token in self.special or token >= len(self.pieces):
                continue
            if not groups or self.pieces[token].startswith(_SPACE):
                groups.append([token])
            else:
                groups[-1].append(token)
        return tuple(Word(self.text(g), tuple(g)) for g in groups)

    def text(self, tokens: Sequence[int]) -> str:
        data = b"".join(self.pieces[t] for t in tokens if t not in self.special and t < len(self.pieces))
        return data.replace(_SPACE, b" ").decode("utf-8", errors="replace")


@dataclass
class MoonshineFeatures:
    hidden: ort.OrtValue  # encoder output, on the model's device
    duration: float


class MoonshineModel:
    """The Moonshine family behind :class:`decoder.api.SpeechModel`."""

    languages = ("en",)

    def __init__(
        self,
        name: str,
        encoder_path: Path,
        decoder_path: Path,
        tokenizer_path: Path,
        runtime: RuntimeOptions = RuntimeOptions(),
        limits: DecodeLimits | None = None,
    ):
        self.name = name
        self.encoder, self.device = create_session(encoder_path, runtime)
        self.decoder, _ = create_session(decoder_path, runtime)
        self.tokenizer = MoonshineTokenizer(tokenizer_path)
        self.limits = limits or DecodeLimits()
        self._past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self._present_names = [o.name for o in self.decoder.get_outputs() if o.name.startswith("present.")]
        self._self_attention = [n for n in self._present_names if ".decoder." in n]
        first = next(i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values."))
        self._heads, self._head_dim = int(first.shape[1]), int(first.shape[3])
        vocab = int(self.decoder.get_outputs()[0].shape[-1])
        # The output layer is wider than the vocabulary; padding ids and <unk> are never emitted.
        self._suppress = np.zeros(vocab, dtype=np.float32)
        self._suppress[len(self.tokenizer) :] = -np.inf
        self._suppress[0] = -np.inf

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, audio: np.ndarray) -> MoonshineFeatures:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        # The encoder's convolutions need a minimum length; pad very short audio with silence.
        if audio.shape[1] < SAMPLE_RATE // 4:
            audio = np.pad(audio, ((0, 0), (0, SAMPLE_RATE // 4 - audio.shape[1])))
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("input_values", audio)
        binding.bind_output("last_hidden_state", self.device.kind, self.device.index)
        self.encoder.run_with_iobinding(binding)
        return MoonshineFeatures(binding.get_outputs()[0], audio.shape[1] / SAMPLE_RATE)

    # -- decoder ---------------------------------------------------------------------------
    def _start(self, features: MoonshineFeatures, ids: Sequence[int]) -> tuple[np.ndarray, ort.IOBinding]:
        """First decoder call, on BOS plus any known tokens at once (the no-cache branch).
        Returns log-probabilities at every input position (row i predicts the token after
        ids[i]) and a binding ready for :meth:`_next`."""
        first = self.decoder.io_binding()
        first.bind_cpu_input("input_ids", np.array([ids], dtype=np.int64))
        first.bind_ortvalue_input("encoder_hidden_states", features.hidden)
        first.bind_cpu_input("use_cache_branch", np.array([False]))
        empty = np.zeros((1, self._heads, 0, self._head_dim), dtype=np.float32)
        for name in self._past_names:
            first.bind_cpu_input(name, empty)
        first.bind_output("logits", "cpu")
        for name in self._present_names:
            first.bind_output(name, self.device.kind, self.device.index)
        self.decoder.run_with_iobinding(first)
        outputs = dict(zip(["logits", *self._present_names], first.get_outputs()))
        # Later calls reuse one binding: the encoder states and the cross-attention cache
        # never change, so they are bound once; the cache branch's copies of the latter are
        # not asked for at all.
        step = self.decoder.io_binding()
        step.bind_ortvalue_input("encoder_hidden_states", features.hidden)
        step.bind_cpu_input("use_cache_branch", np.array([True]))
        for name in self._present_names:
            if ".encoder." in name:
                step.bind_ortvalue_input(name.replace("present.", "past_key_values."), outputs[name])
        self._bind_self_attention(step, outputs)
        return self._log_probs(outputs["logits"].numpy()[0]), step

    def _bind_self_attention(self, step: ort.IOBinding, outputs: dict[str, ort.OrtValue]) -> None:
        for name in self._self_attention:
            step.bind_ortvalue_input(name.replace("present.", "past_key_values."), outputs[name])
        step.clear_binding_outputs()
        step.bind_output("logits", "cpu")
        for name in self._self_attention:
            step.bind_output(name, self.device.kind, self.device.index)

    def _next(self, step: ort.IOBinding, token: int) -> np.ndarray:
        """One cached decoder step; returns the next token's log-probabilities."""
        step.bind_cpu_input("input_ids", np.array([[token]], dtype=np.int64))
        self.decoder.run_with_iobinding(step)
        outputs = dict(zip(["logits", *self._self_attention], step.get_outputs()))
        self._bind_self_attention(step, outputs)
        return self._log_probs(outputs["logits"].numpy()[0, -1])

    def _log_probs(self, logits: np.ndarray) -> np.ndarray:
        logits = logits + self._suppress
        peak = logits.max(axis=-1, keepdims=True)
        return logits - (peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True)))

    def decode(
        self,
        features: MoonshineFeatures,
        prefix: Sequence[Word] = (),
        draft: Sequence[Word] = (),
        language: str | None = None,
    ) -> Hypothesis:
        started = time.perf_counter()
        forced = [t for w in prefix for t in w.tokens]
        proposed = [t for w in draft for t in w.tokens]
        budget = self.limits.budget(features.duration)
        proposed = proposed[: max(0, budget - len(forced))]
        # One call checks the whole draft: where the model's greedy choice agrees, the draft
        # token is what greedy decoding would have produced.
        log_probs, step = self._start(features, [BOS, *forced, *proposed])
        accepted = 0
        while accepted < len(proposed) and int(log_probs[len(forced) + accepted].argmax()) == proposed[accepted]:
            accepted += 1
        chosen = proposed[:accepted]
        scores = [float(log_probs[len(forced) + i, t]) for i, t in enumerate(chosen)]
        if accepted < len(proposed):
            # The cache holds the rejected draft tokens too: redo the prefix call without them.
            log_probs, step = self._start(features, [BOS, *forced, *chosen])
        log_probs = log_probs[-1]
        eos_overridden = False
        while len(forced) + len(chosen) < budget:
            token = int(log_probs.argmax())
            if token == EOS and not forced and not chosen:
                # Known quirk: on some real utterances (spoken digit strings among them) the
                # first step prefers end-of-text although a word is plausible. On noise and
                # music end-of-text takes nearly all the mass (alternatives below -7), so the
                # runner-up is taken only when the model itself finds it plausible.
                log_probs[EOS] = -np.inf
                token = int(log_probs.argmax())
                if log_probs[token] < self.limits.first_token_min_logprob:
                    break
                eos_overridden = True
            if token == EOS:
                break
            chosen.append(token)
            scores.append(float(log_probs[token]))
            loop_at = repetition_start(
                forced + chosen, self.limits.repeat_ngram_max, self.limits.repeat_times, self.limits.repeat_phrase_tokens
            )
            if loop_at is not None:
                del chosen[max(0, loop_at - len(forced)) :]
                del scores[len(chosen) :]
                break
            log_probs = self._next(step, token)
        if eos_overridden and scores and np.mean(scores) < self.limits.override_min_avg_logprob:
            chosen, scores = [], []  # the model never believed in these words
        words = self.tokenizer.words(forced + chosen)
        return Hypothesis(
            words=words,
            language="en",
            avg_logprob=float(np.mean(scores)) if scores else 0.0,
            compute_seconds=time.perf_counter() - started,
        )
