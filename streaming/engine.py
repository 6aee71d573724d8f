"""Owns the model and the decode threads; the one place that decides how busy the machine is.

Sessions hand it :class:`DecodeRequest` objects; it runs them on worker threads (never on the
event loop) and answers with hypotheses. ONNX Runtime releases the GIL while it computes, so
several sessions' decodes run in parallel up to ``workers``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from decoder.api import Hypothesis, SpeechModel, transcribe
from streaming.session import DecodeRequest

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    decodes: int = 0
    failures: int = 0
    audio_seconds: float = 0.0  # audio decoded (counted once per decode, re-decodes included)
    compute_seconds: float = 0.0
    queued: int = 0  # waiting or running right now


class Engine:
    def __init__(self, model: SpeechModel, workers: int = 2, max_queued: int = 64, delay_s: float = 0.0):
        self.model = model
        self.delay_s = delay_s
        self.workers = workers
        self.max_queued = max_queued
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    @property
    def overloaded(self) -> bool:
        return self.stats.queued >= self.max_queued

    def decode_blocking(self, request: DecodeRequest) -> Hypothesis:
        """Run one request on the calling thread."""
        if self.delay_s:
            time.sleep(self.delay_s)  # testing aid (--decode-delay): a slower model
        try:
            hypothesis = transcribe(
                self.model, request.audio, prefix=request.prefix, draft=request.draft, language=request.language
            )
        except Exception:
            with self._lock:
                self.stats.failures += 1
            raise
        with self._lock:
            self.stats.decodes += 1
            self.stats.audio_seconds += len(request.audio) / 16000
            self.stats.compute_seconds += hypothesis.compute_seconds
        return hypothesis

    async def decode(self, request: DecodeRequest) -> tuple[Hypothesis, float]:
        """Run one request on a worker thread; returns the hypothesis and the wall time it took
        including the wait for a free worker."""
        started = time.perf_counter()
        with self._lock:
            self.stats.queued += 1
        try:
            loop = asyncio.get_running_loop()
            hypothesis = await loop.run_in_executor(self._executor, self.decode_blocking, request)
        finally:
            with self._lock:
                self.stats.queued -= 1
        return hypothesis, time.perf_counter() - started

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
