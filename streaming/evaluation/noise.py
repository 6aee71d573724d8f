"""Recordings mixed with noise at a given signal-to-noise ratio, for ``flashcaption bench --noise``.

A condition is ``KIND:SNR`` (``pink:10``: pink noise 10 dB below the speech), or ``clean``.
Kinds: ``pink`` and ``brown`` noise (steady, broadband: air conditioning, fans), ``music``
(voiceless, see :mod:`streaming.nonspeech`) and ``babble`` (four other recordings of the set,
in any language, at equal levels: a murmuring room). The speech level is the mean power of the
recording's speech frames, so the ratio does not depend on how much pause a recording holds.
Every mix is seeded by the condition and the recording: the figures repeat run to run. A
recording can also be mixed other ways (``draw`` 1, 2...: other noise, other babble voices):
one mix decides a ratio of a few word errors by chance, so claims pool several draws.

The noise runs through the whole stream: the recording's own pauses, any lead silence and the
silence after it, so the server hears a steady background start before the speech and go on
after it, as in a hall.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streaming.client import read_wav
from streaming.nonspeech import brown_noise, music, pink_noise

KINDS = ("pink", "brown", "music", "babble")
BABBLE_VOICES = 4


@dataclass(frozen=True)
class Noise:
    kind: str
    snr_db: float
    # Recordings a babble is made of (the set's others, chosen per recording).
    voices: tuple[Path, ...] = ()
    draw: int = 0  # which of a recording's mixes under this condition (0: the one figures quote)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.snr_db:g}"


def parse_conditions(text: str) -> list[Noise | None]:
    """``clean,pink:10,babble:5`` → conditions (None is clean); a clear error otherwise."""
    conditions: list[Noise | None] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "clean":
            conditions.append(None)
            continue
        kind, _, snr = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"noise {item!r}: the kind must be one of {', '.join(KINDS)} (or 'clean')")
        try:
            snr_db = float(snr)
        except ValueError:
            raise ValueError(f"noise {item!r}: give the signal-to-noise ratio in dB, e.g. {kind}:10") from None
        if not -10 <= snr_db <= 40:
            raise ValueError(f"noise {item!r}: the ratio must be between -10 and 40 dB")
        conditions.append(Noise(kind, snr_db))
    if not conditions:
        raise ValueError("no noise condition given, e.g. --noise pink:10,pink:5,music:10,babble:10")
    return conditions


def with_voices(noise: Noise, clip_path: Path, paths: Sequence[Path]) -> Noise:
    """The condition for one recording: a babble gets its voices from the others, seeded by it."""
    if noise.kind != "babble":
        return noise
    others = sorted(p for p in paths if p != clip_path)
    rng = np.random.default_rng(_seed(noise.label, clip_path.name, noise.draw))
    chosen = rng.choice(len(others), size=min(BABBLE_VOICES, len(others)), replace=False)
    return Noise(noise.kind, noise.snr_db, tuple(others[i] for i in sorted(chosen)), noise.draw)


def mix(audio: np.ndarray, speech: np.ndarray, noise: Noise, name: str, rate: int = 16_000) -> np.ndarray:
    """``audio`` with ``noise`` added at its ratio to the power of the ``speech`` frames (a
    boolean per 20 ms frame); seeded by ``name`` (the recording) and the condition."""
    seed = _seed(noise.label, name, noise.draw)
    background = _background(noise, len(audio) / rate, seed, rate)[: len(audio)]
    hop = int(rate * 0.02)
    count = min(len(speech), len(audio) // hop)
    frames = audio[: count * hop].reshape(-1, hop)[speech[:count]]
    speech_power = float(np.mean(frames.astype(np.float64) ** 2)) if frames.size else float(np.mean(audio.astype(np.float64) ** 2))
    noise_power = float(np.mean(background.astype(np.float64) ** 2)) + 1e-20
    gain = np.sqrt(speech_power / noise_power / 10 ** (noise.snr_db / 10))
    mixed = audio + gain * background
    peak = float(np.abs(mixed).max())
    # Scaled down whole if it would clip (the ratio is kept; a louder mix would be distorted).
    return (mixed / peak * 0.99 if peak > 0.99 else mixed).astype(np.float32)


def _background(noise: Noise, seconds: float, seed: int, rate: int) -> np.ndarray:
    if rate != 16_000:
        raise ValueError("noise is mixed at 16 kHz")
    if noise.kind == "pink":
        return pink_noise(seconds, seed=seed)
    if noise.kind == "brown":
        return brown_noise(seconds, seed=seed)
    if noise.kind == "music":
        return music(seconds, seed=seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    rng = np.random.default_rng(seed)
    for path in noise.voices:
        voice, voice_rate = read_wav(path)
        if voice_rate != rate:
            import soxr

            voice = soxr.resample(voice, voice_rate, rate)
        voice = voice / (np.sqrt(np.mean(voice.astype(np.float64) ** 2)) + 1e-9)
        # Looped from a random point, so the voices do not start together.
        start = int(rng.integers(len(voice)))
        out += np.resize(np.roll(voice, -start), n).astype(np.float32)
    return out


def _seed(label: str, name: str, draw: int = 0) -> int:
    return zlib.crc32((f"{label}/{name}" + (f"/{draw}" if draw else "")).encode())
