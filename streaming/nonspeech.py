"""Audio without speech, generated: what a captioning service must print nothing for.

Used by the tests and by ``flashcaption bench``; deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000


def pink_noise(seconds: float, level: float = 0.3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (level * noise / np.abs(noise).max()).astype(np.float32)


def brown_noise(seconds: float, level: float = 0.5, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = np.cumsum(rng.standard_normal(int(seconds * SAMPLE_RATE)))
    noise -= np.convolve(noise, np.ones(801) / 801, mode="same")  # keep it from drifting off
    return (level * noise / np.abs(noise).max()).astype(np.float32)


def music(seconds: float, seed: int = 3) -> np.ndarray:
    """Plucked notes with harmonics, overlapping: music, no voice."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    scale = [261.6, 293.7, 329.6, 349.2, 392.0, 440.0, 493.9, 523.3]
    for start in range(0, n - len(t), len(t) // 2):
        f0 = scale[rng.integers(len(scale))] * (2 if rng.random() < 0.3 else 1)
        note = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(-6 * t)
        out[start : start + len(t)] += 0.15 * note.astype(np.float32)
    return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


NON_SPEECH = {
    "silence": lambda seconds: silence(seconds),
    "pink_noise": lambda seconds: pink_noise(seconds),
    "brown_noise": lambda seconds: brown_noise(seconds),
    "music": lambda seconds: music(seconds),
}
