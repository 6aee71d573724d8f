"""Shared fixtures: the real model, real recordings, generated non-speech, a real server."""

from __future__ import annotations

import asyncio
import csv
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from decoder.api import SAMPLE_RATE
from decoder.models import DEFAULT_MODEL, load_model
from decoder.runtime import RuntimeOptions
from streaming import client, nonspeech

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Clip:
    id: str
    language: str
    reference: str
    audio: np.ndarray  # float32, 16 kHz


def read_wav(path: Path) -> np.ndarray:
    samples, rate = client.read_wav(path)
    assert rate == SAMPLE_RATE, path
    return samples


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
NON_SPEECH = {name: (lambda make=make: make(30)) for name, make in nonspeech.NON_SPEECH.items()}


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
        if not self._thread.is_alive():
            return
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


def pytest_terminal_summary(terminalreporter) -> None:
    """Point at the browser tests' screenshots, which are part of the test output."""
    from tests.test_web import SCREENSHOTS

    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"screenshots: {SCREENSHOTS} ({len(list(SCREENSHOTS.glob('*.png')))} files)")
