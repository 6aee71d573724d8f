"""How one model serves many decodes at once: a few calls at a time, finals first, and the
token steps of concurrent decodes run as one batch.

Each stream's decode runs on a thread of its own (streaming/engine.py). Its model calls take
turns in the model's :class:`ComputeLane`: at most ``width`` calls run at once, and waiting
calls go in order of priority: a final's before a partial's, and the partial of an utterance
that has shown no words yet before other partials. No partial's call starts while a
final is being decoded, so a final shares the machine only with calls already running. Under
load it is the partials that give way. A thread says what its calls are for with
:meth:`ComputeLane.request`. (What this buys on a 2-core CPU, and what it does not: README,
Streams per machine.)

A decoder step costs nearly the same for one row as for four (on the CPU a step reads every
weight once, whatever the rows; measured on 2 cores: 14 ms for one row, 22 ms for four), so
the :class:`StepBatcher` runs the steps of concurrent decodes together, in lockstep: a decode
that has taken a step is a member until it ends, and a batch waits (a few milliseconds at
most) until every member has asked for its next step. Without that, two decodes take turns
in batches of one: each asks again just after the other's batch has started. A decode that
is still encoding is not waited for; it joins with its first step. A batch that fails is run
again one step at a time, so a bad request fails alone.

A request may be withdrawn while it runs (a partial, when its stream has a final to decode):
its next call, or step, raises :class:`DecodeWithdrawn` instead of running.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

StepT = TypeVar("StepT")
ResultT = TypeVar("ResultT")


# Priorities in the lane: a final's calls; a partial's whose utterance has shown no words yet;
# other partials'. Only URGENT calls may take the last place.
URGENT, EAGER, ROUTINE = 0, 1, 2
_priority: contextvars.ContextVar[int] = contextvars.ContextVar("priority", default=ROUTINE)
_waited: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("waited", default=None)
_withdrawn: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("withdrawn", default=None)


class DecodeWithdrawn(Exception):
    """The request was withdrawn before this call (see ComputeLane.request)."""


def raise_if_withdrawn() -> None:
    withdrawn = _withdrawn.get()
    if withdrawn is not None and withdrawn.is_set():
        raise DecodeWithdrawn("the decode was withdrawn")


@dataclass
class CallStats:
    """One kind of model call in the lane."""

    calls: int = 0
    rows: int = 0  # rows computed (a batch of four steps: one call, four rows)
    seconds: float = 0.0  # running
    wait_seconds: float = 0.0  # waiting for the turn
    sizes: dict[int, int] = field(default_factory=dict)  # calls by number of rows


@dataclass
class Turn:
    rows: int


class ComputeLane:
    """Up to ``width`` model calls at a time, the most urgent waiting call next (then the
    earliest). Routine calls never take the last place, and none starts while an urgent
    request is in progress: a final's call, or a step, waits at most for the calls already
    running, never behind a partial's."""

    def __init__(self, width: int = 1) -> None:
        if width < 1:
            raise ValueError(f"a lane is at least 1 call wide, not {width}")
        self.width = width
        self._lock = threading.Condition()
        self._running = 0
        self._urgent_requests = 0  # urgent requests in progress (see request)
        self._queue: list[tuple[int, int]] = []  # (priority, ticket), a heap
        self._tickets = itertools.count()
        self.stats: dict[str, CallStats] = {}

    @contextmanager
    def turn(self, kind: str, rows: int = 1, priority: int | None = None) -> Iterator[Turn]:
        """Hold the lane for one call of ``kind`` (for the statistics) on ``rows`` rows (the
        holder may correct them); ``priority``: the calling thread's unless given."""
        raise_if_withdrawn()
        entry = (_priority.get() if priority is None else priority, next(self._tickets))
        asked = time.perf_counter()
        with self._lock:
            heapq.heappush(self._queue, entry)
            urgent = entry[0] == URGENT
            room = self.width if urgent else max(1, self.width - 1)
            while self._running >= room or self._queue[0] != entry or (not urgent and self._urgent_requests):
                self._lock.wait()
            heapq.heappop(self._queue)
            self._lock.notify_all()  # the next in line may fit too
            raise_if_withdrawn()  # withdrawn while it waited: its turn goes to the next
            self._running += 1
        started = time.perf_counter()
        tally = _waited.get()
        if tally is not None:
            tally[0] += started - asked
        call = Turn(rows)
        try:
            yield call
        finally:
            ended = time.perf_counter()
            with self._lock:
                self._running -= 1
                stats = self.stats.setdefault(kind, CallStats())
                stats.calls += 1
                stats.rows += call.rows
                stats.seconds += ended - started
                stats.wait_seconds += started - asked
                stats.sizes[call.rows] = stats.sizes.get(call.rows, 0) + 1
                self._lock.notify_all()

    @contextmanager
    def request(self, urgent: bool, withdrawn: threading.Event | None = None, eager: bool = False) -> Iterator[list[float]]:
        """The calls this thread makes inside serve one request: a final's (``urgent``) or a
        partial's (``eager``: before other partials); once ``withdrawn`` is set, they raise
        :class:`DecodeWithdrawn`. Yields a one-item list that ends up holding how long they
        waited."""
        waited = [0.0]
        priority, tally = _priority.set(URGENT if urgent else EAGER if eager else ROUTINE), _waited.set(waited)
        cancel = _withdrawn.set(withdrawn)
        if urgent:
            with self._lock:
                self._urgent_requests += 1
        try:
            yield waited
        finally:
            _priority.reset(priority)
            _waited.reset(tally)
            _withdrawn.reset(cancel)
            if urgent:
                with self._lock:
                    self._urgent_requests -= 1
                    self._lock.notify_all()

    @contextmanager
    def snapshot(self) -> Iterator[dict[str, CallStats]]:
        """The statistics, not changing while held."""
        with self._lock:
            yield self.stats


@dataclass
class _Slot(Generic[StepT, ResultT]):
    step: StepT
    done: bool = False
    result: ResultT | None = None
    error: BaseException | None = None


class StepBatcher(Generic[StepT, ResultT]):
    """Runs steps from many threads as batches, in lockstep (see the module notes).

    ``alone`` runs one step (the fast path: nothing is padded or copied); ``together`` runs
    several and returns their results in order. Both run on a caller's thread, in ``lane``.
    Steps go first in the lane: every decode running takes one, a final's among them, and
    a step is short; it is the partials' encoder calls that give way."""

    def __init__(
        self,
        alone: Callable[[StepT], ResultT],
        together: Callable[[Sequence[StepT]], list[ResultT]],
        lane: ComputeLane,
        max_rows: int = 8,
        gather_s: float = 0.005,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self._alone, self._together, self._lane, self.max_rows = alone, together, lane, max_rows
        self._lock = threading.Condition()
        self._waiting: list[_Slot[StepT, ResultT]] = []
        self._busy = False
        self.retried = 0  # batches that failed and were run again one step at a time
        self.gather_s = gather_s
        self._members = 0  # decodes in their token loop that have taken a step
        self._local = threading.local()  # per thread: None outside a decode, else whether a member

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Around a decode's token loop on this thread: from its first step, batches wait for it."""
        self._local.member = False
        try:
            yield
        finally:
            if self._local.member:
                with self._lock:
                    self._members -= 1
                    self._lock.notify_all()
            self._local.member = None

    def run(self, step: StepT) -> ResultT:
        raise_if_withdrawn()
        slot: _Slot[StepT, ResultT] = _Slot(step)
        with self._lock:
            if getattr(self._local, "member", None) is False:
                self._local.member = True
                self._members += 1
            self._waiting.append(slot)
            self._lock.notify_all()  # a leader may be gathering
            while not slot.done:
                if self._busy:
                    self._lock.wait()
                    continue
                self._busy = True  # this thread runs the next batch
                deadline = time.monotonic() + self.gather_s
                while len(self._waiting) < min(self._members, self.max_rows) and (left := deadline - time.monotonic()) > 0:
                    self._lock.wait(left)
                self._lock.release()
                try:
                    self._lead()
                finally:
                    self._lock.acquire()
                    self._busy = False
                    self._lock.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with done unless error is

    def _lead(self) -> None:
        """Wait for the lane, then run every step waiting by then (up to ``max_rows``)."""
        with self._lane.turn("decoder step", priority=URGENT) as call:
            with self._lock:
                batch = self._waiting[: self.max_rows]
                del self._waiting[: len(batch)]
            call.rows = len(batch)
            self._serve(batch)

    def _serve(self, batch: list[_Slot[StepT, ResultT]]) -> None:
        try:
            if len(batch) == 1:
                self._settle(batch[0], lambda: self._alone(batch[0].step))
            else:
                try:
                    results = self._together([slot.step for slot in batch])
                except Exception:
                    # Which step broke the batch is not known: each runs again on its own.
                    self.retried += 1
                    for slot in batch:
                        self._settle(slot, lambda s=slot: self._alone(s.step))  # type: ignore[misc]
                else:
                    for slot, result in zip(batch, results, strict=True):
                        slot.result, slot.done = result, True
        except BaseException as error:  # the batch's callers must never wait for ever
            for slot in batch:
                if not slot.done:
                    slot.error, slot.done = error, True
            raise

    @staticmethod
    def _settle(slot: _Slot[StepT, ResultT], run: Callable[[], ResultT]) -> None:
        try:
            slot.result = run()
        except Exception as error:
            slot.error = error
        slot.done = True
