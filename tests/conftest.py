"""Shared fixtures: the real model, real recordings, generated non-speech, a real server; and
the fast tier: every test that needs no real model and no browser is marked ``fast``
(``bin/test -m fast``), decided from the fixtures it uses (see :func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import asyncio
import csv
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
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

    def start(self) -> ServerThread:
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


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server on a loopback port with the scripted model (tests/scripted.py): fast."""
    from streaming.config import ServerConfig
    from streaming.server import CaptionServer
    from tests.scripted import ScriptedModel

    config = ServerConfig(port=0, viewer_queue=64, data_dir=tmp_path_factory.mktemp("scripted"))
    running = ServerThread(CaptionServer(config, ScriptedModel())).start()
    yield running
    running.stop()


# -- the fast tier ----------------------------------------------------------------------------
# A test that uses one of these fixtures, directly or through another fixture, needs a real
# model (loaded here, or by a server it starts) or a browser: it is not in the fast tier.
HEAVY_FIXTURES = frozenset({"model", "whisper", "checkpoint", "server", "serve", "playwright", "browser"})
# Tests that need a real model in a way no fixture shows: a `flashcaption serve` (or `soak`,
# `bench`) subprocess, or ONNX Runtime sessions on a model's files. In modules that can say
# so themselves (or for a test slow without a model), `@pytest.mark.slow` does the same.
SLOW_TESTS = {
    "test_bench.py": {
        "test_latency_figures_follow_a_slowed_server",
        "test_soak_command_runs_and_accounts_for_every_final",
        "test_soak_with_faults_still_delivers_every_final_once_in_order",
    },
    "test_cli.py": {
        "test_sigterm_finalises_open_utterances_before_exit",
        "test_serve_refuses_bad_settings_in_one_line",  # --room-languages is checked against the loaded model
    },
    "test_runtime.py": {"test_cpu_is_cpu", "test_auto_reports_the_provider_it_really_got", "test_explicit_cuda_never_falls_back_silently"},
}


def is_fast(item: pytest.Item) -> bool:
    if item.get_closest_marker("slow") is not None:
        return False
    if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
        return False
    name = getattr(item, "originalname", item.name)
    return name not in SLOW_TESTS.get(item.path.name, set())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_fast(item):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def _fast_tests_load_no_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked fast that opens an ONNX Runtime session (a real model) fails, so a test
    that loads one in a way its fixtures do not show cannot slip into the fast tier."""
    if request.node.get_closest_marker("fast") is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{request.node.nodeid} is in the fast tier but loads a real model: use the model fixture, or mark it slow"
        )

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def pytest_terminal_summary(terminalreporter) -> None:
    """Point at the browser tests' screenshots, which are part of the test output."""
    from tests.test_web import SCREENSHOTS

    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"screenshots: {SCREENSHOTS} ({len(list(SCREENSHOTS.glob('*.png')))} files)")
