"""Shared fixtures: the real model, real recordings, generated non-speech, a real server."""

from __future__ import annotations

import asyncio
import csv
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from decoder.api import SAMPLE_RATE
from decoder.models import DEFAULT_MODEL, load_model
from decoder.runtime import RuntimeOptions

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Clip:
    id: str
    language: str
    reference: str
    audio: np.ndarray  # float32, 16 kHz


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == SAMPLE_RATE and wav.getsampwidth() == 2 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768


def _load_clips() -> dict[str, Clip]:
    with open(DATA / "manifest.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["id"]: Clip(r["id"], r["lang"], r["reference"], read_wav(DATA / r["wav"])) for r in rows}


CLIPS = _load_clips()
ENGLISH = [c for c in CLIPS.values() if c.language == "en"]


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    return CLIPS


@pytest.fixture(scope="session")
def model():
    return load_model(DEFAULT_MODEL, RuntimeOptions(device="cpu"))


# -- generated audio without speech ---------------------------------------------------------
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
    """Plucked notes with harmonics over a chord progression: music, no voice."""
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


NON_SPEECH = {
    "silence": lambda: np.zeros(30 * SAMPLE_RATE, np.float32),
    "pink_noise": lambda: pink_noise(30),
    "brown_noise": lambda: brown_noise(30),
    "music": lambda: music(30),
}


# -- a real server on a loopback port ---------------------------------------------------------
class ServerThread:
    """A CaptionServer on its own event loop in a background thread."""

    def __init__(self, server):
        self.server = server
        self.port: int | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.port = await self.server.start()
            self._started.set()
            await self._stop.wait()
            await self.server.shutdown()

        asyncio.run(main())

    def start(self) -> "ServerThread":
        self._thread.start()
        assert self._started.wait(30), "server did not start"
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer

    config = ServerConfig(port=0, viewer_queue=64, data_dir=tmp_path_factory.mktemp("data"))
    running = ServerThread(CaptionServer(config, model)).start()
    yield running
    running.stop()
