"""Owns the model and the decode threads; the one place that decides how busy the machine is.

Sessions hand it :class:`DecodeRequest` objects; it runs them on worker threads (never on the
event loop) and answers with hypotheses. Up to ``workers`` decodes run at once; their model
calls take turns in the model's lane (decoder/batching.py). Finals go first, in the queue for
a worker and in the lane: a final is what a viewer keeps, and what latency is judged by, while
a partial that waits is simply replaced by a later one.

There are more workers than cores on purpose: one model serves every stream, and a family
that batches (Moonshine: decoder/batching.py) runs the token steps of concurrent decodes as
one batch, which costs little more than one of them. So concurrent decodes are cheap, and
what bounds the streams is the latency of their finals (see ``overloaded``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from decoder.api import SAMPLE_RATE, Hypothesis, SpeechModel, transcribe
from decoder.batching import DecodeWithdrawn
from streaming.session import DecodeRequest

log = logging.getLogger(__name__)


@dataclass
class KindStats:
    """Decodes of one kind (partial, final...: DecodeRequest.kind)."""

    decodes: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0


@dataclass
class EngineStats:
    failures: int = 0
    withdrawn: int = 0  # decodes their callers gave up (partials, for their stream's final)
    queued: int = 0  # waiting or running right now
    # Smoothed time requests waited for a worker, and finals also for their turns in the
    # model's lane, when last measured: what admission is judged by.
    wait_seconds: float = 0.0
    wait_measured: float = 0.0  # time.monotonic() of that measurement
    # Decodes run, by kind; the totals below add them up (read from the event loop while
    # workers add kinds: the dict's values are copied in one step, under the GIL, first).
    by_kind: dict[str, KindStats] = field(default_factory=dict)

    @property
    def decodes(self) -> int:
        return sum(k.decodes for k in tuple(self.by_kind.values()))

    @property
    def audio_seconds(self) -> float:
        """Audio decoded (counted once per decode, re-decodes included)."""
        return sum(k.audio_seconds for k in tuple(self.by_kind.values()))

    @property
    def compute_seconds(self) -> float:
        """Decodes' wall time, their waits for the model included."""
        return sum(k.compute_seconds for k in tuple(self.by_kind.values()))

    def recent_wait(self, now: float | None = None, half_life_s: float = 2.0) -> float:
        """The smoothed wait, fading while no request is queued: a server that was saturated
        and then went quiet must take new streams again, although no decode measures it."""
        if self.queued:
            return self.wait_seconds  # still busy: the last measurement stands
        elapsed = max(0.0, (time.monotonic() if now is None else now) - self.wait_measured)
        return self.wait_seconds * 0.5 ** (elapsed / half_life_s)


@dataclass(frozen=True)
class Decoded:
    hypothesis: Hypothesis
    wall_seconds: float  # from the request to its answer, the wait for a free worker included


@dataclass(order=True)
class _Job:
    """A queued request: finals (priority 0) before partials of utterances that have shown no
    words yet (1), then other partials (2), each in arrival order; a job without a request
    (priority 3) tells a worker to stop."""

    priority: int
    order: int
    request: DecodeRequest | None = field(default=None, compare=False)
    future: asyncio.Future[Hypothesis] | None = field(default=None, compare=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, compare=False)
    queued_at: float = field(default=0.0, compare=False)
    withdrawn: threading.Event = field(default_factory=threading.Event, compare=False)


class Engine:
    def __init__(
        self,
        model: SpeechModel,
        workers: int = 2,
        max_queued: int = 64,
        delay_s: float = 0.0,
        max_wait_s: float = 0.75,
    ):
        self.max_wait_s = max_wait_s
        self.model = model
        self.delay_s = delay_s
        self.workers = workers
        self.max_queued = max_queued
        self.stats = EngineStats()
        # Told True when a decode is asked for with none in flight, False when the last one
        # ends (on the event loop): the shadow model runs only in between (server/shadows.py).
        self.on_busy: Callable[[bool], None] = lambda busy: None
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"decode-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def overloaded(self) -> bool:
        """Saturated, as measured: requests wait long for a worker or finals for the model (or
        very many requests are queued). New streams are then refused, rather than every
        stream's captions growing late."""
        return self.stats.queued >= self.max_queued or self.stats.recent_wait() > self.max_wait_s

    def decodes_by_kind(self) -> dict[str, KindStats]:
        """A copy of the decode counts by kind."""
        with self._lock:
            return {kind: replace(stats) for kind, stats in self.stats.by_kind.items()}

    def decode_blocking(self, request: DecodeRequest, queued_s: float = 0.0, withdrawn: threading.Event | None = None) -> Hypothesis:
        """Run one request on the calling thread (``queued_s``: how long it waited for it);
        once ``withdrawn`` is set, its next model call raises DecodeWithdrawn."""
        try:
            with self.model.lane.request(request.urgent, withdrawn, eager=request.first_words) as waited:
                if self.delay_s:
                    time.sleep(self.delay_s)  # testing aid (--decode-delay): a slower model
                hypothesis = transcribe(self.model, request.audio, request.prefix, request.draft, request.options)
        except DecodeWithdrawn:
            raise  # not a failure: counted where it was withdrawn
        except Exception:
            with self._lock:
                self.stats.failures += 1
            raise
        with self._lock:
            kind = self.stats.by_kind.setdefault(request.kind, KindStats())
            kind.decodes += 1
            kind.audio_seconds += len(request.audio) / SAMPLE_RATE
            kind.compute_seconds += hypothesis.compute_seconds
            # More decodes than workers is saturation, whoever waits; in the model's lane,
            # partials wait while finals keep it busy by design, so only finals' turns count.
            now = time.monotonic()
            waited_s = queued_s + (waited[0] if request.urgent else 0.0)
            self.stats.wait_seconds = 0.8 * self.stats.recent_wait(now) + 0.2 * waited_s
            self.stats.wait_measured = now
        return hypothesis

    async def decode(self, request: DecodeRequest) -> Decoded:
        """Run one request on a worker thread. Cancelling the caller withdraws the request: if
        a worker has it, the decode stops at its next model call."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Hypothesis] = loop.create_future()
        with self._lock:
            self.stats.queued += 1
            first = self.stats.queued == 1
        if first:
            self.on_busy(True)
        job = _Job(0 if request.urgent else 1 if request.first_words else 2, next(self._order), request, future, loop, time.perf_counter())
        try:
            self._queue.put(job)
            hypothesis = await future
        except asyncio.CancelledError:
            job.withdrawn.set()
            with self._lock:
                self.stats.withdrawn += 1
            raise
        finally:
            with self._lock:
                self.stats.queued -= 1
                last = self.stats.queued == 0
            if last:
                self.on_busy(False)
        return Decoded(hypothesis, time.perf_counter() - started)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            request, future, loop = job.request, job.future, job.loop
            if request is None or future is None or loop is None:
                return  # closing
            if future.cancelled():
                continue
            try:
                result = self.decode_blocking(request, time.perf_counter() - job.queued_at, job.withdrawn)
            except Exception as error:  # reported to the awaiting session (unless withdrawn: then no one awaits)
                settle: tuple[Hypothesis | None, BaseException | None] = (None, error)
            else:
                settle = (result, None)
            try:
                loop.call_soon_threadsafe(_settle, future, *settle)
            except RuntimeError:
                pass  # the caller's event loop has closed: nobody waits for the answer, and the worker goes on

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_Job(3, next(self._order)))
        for thread in self._threads:
            thread.join(timeout=30)


def _settle(future: asyncio.Future[Hypothesis], result: Hypothesis | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)
