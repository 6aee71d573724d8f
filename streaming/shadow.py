"""Live shadow: a second model decodes the audio of each final the server's model makes, and its
text is kept beside the final (a pilot of another model on the user's own live audio).

The shadow never delays the server's own captions. It runs in a process of its own (its own
interpreter, so its own GIL, and its own ONNX Runtime threads) at the lowest CPU priority
(nice 19, set before the model starts its threads, which inherit it), and that process is
stopped (SIGSTOP) whenever the primary engine has a decode in flight and continued when it has
none (:meth:`ShadowModel.pause`): it runs in the primary's idle time only. And it is skipped first under
load (:class:`ShadowQueue`): a final made while the primary engine is overloaded is not decoded,
and past ``max_pending`` waiting finals the oldest is given up. Both are counted.

No sockets and no server here: the server's glue is ``streaming/server/shadows.py``.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from decoder.api import DecodeOptions, SpeechModel, transcribe
from decoder.context import Context

# Opens the shadow model, in the shadow's process: picklable (a module-level function, or a
# functools.partial of one), since it is sent there.
Loader = Callable[[], SpeechModel]
T = TypeVar("T")

# The shadow process's model, opened by its first call.
_opened: SpeechModel | None = None


@dataclass(frozen=True)
class ShadowText:
    """What the shadow model made of one final's audio."""

    text: str
    language: str
    compute_seconds: float
    rejected: str | None = None  # a guard against invented text dropped its words (decoder.api.Hypothesis)


def _model(loader: Loader) -> SpeechModel:
    global _opened
    if _opened is None:
        os.nice(19)  # the lowest priority, before the runtime starts its threads: they inherit it
        _opened = loader()
    return _opened


def _describe(loader: Loader) -> tuple[str, tuple[str, ...], int]:
    model = _model(loader)
    return model.name, tuple(model.languages), os.getpid()


def _decode(loader: Loader, audio: np.ndarray, options: DecodeOptions) -> ShadowText:
    hypothesis = transcribe(_model(loader), audio, options=options)
    return ShadowText(hypothesis.text.strip(), hypothesis.language or options.language or "", hypothesis.compute_seconds, hypothesis.rejected)


class ShadowModel:
    """A speech model in a process of its own at the lowest CPU priority, one decode at a time."""

    def __init__(self, loader: Loader, beam_size: int = 1):
        self._loader = loader
        self.beam_size = beam_size
        self.name = ""
        self.languages: tuple[str, ...] = ()
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None  # its process's
        self._paused = False
        self._closed = False

    def start(self) -> None:
        """Open the model in its process (blocking: seconds); raises what opening it raised."""
        self._pool = _pool()
        self.name, self.languages, self._pid = self._pool.submit(_describe, self._loader).result()

    def pause(self, paused: bool) -> None:
        """Stop (SIGSTOP) or continue (SIGCONT) its process: while the primary decodes, the shadow
        takes no cycle at all. At nice 19 alone it still slowed the primary's finals (60 ms at
        p50 beside 4 streams: it runs whenever a core is free for an instant, and caches and
        memory bandwidth are shared, which priorities do not share out); stopped, it cannot."""
        if paused == self._paused or self._pid is None or self._closed:
            return
        self._paused = paused
        try:
            os.kill(self._pid, signal.SIGSTOP if paused else signal.SIGCONT)
        except ProcessLookupError:
            pass  # gone: the next decode starts a new one

    async def decode(self, audio: np.ndarray, language: str | None, context: Context | None) -> ShadowText:
        """``audio`` (16 kHz) in ``language`` where the model has it (else it detects), biased
        to ``context`` as the primary's decode was."""
        assert self._pool is not None, "start() first"
        options = DecodeOptions(language=language if language in self.languages else None, context=context, beam_size=self.beam_size)
        try:
            return await asyncio.wrap_future(self._pool.submit(_decode, self._loader, audio, options))
        except BrokenProcessPool:
            # Its process died (killed, out of memory): the next final gets a new one.
            self._pool, self._pid = _pool(), None  # no signal to a dead process's id meanwhile
            paused, self._paused = self._paused, False
            _, _, self._pid = await asyncio.wrap_future(self._pool.submit(_describe, self._loader))
            self.pause(paused)
            raise

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop its process: continued first (a stopped one would never read that it must end),
        then given ``timeout_s`` to finish the decode it has, then killed."""
        self._closed = True
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self._pool is None:
            return
        processes = list(getattr(self._pool, "_processes", {}).values())  # to kill one that does not end
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout_s)
            if process.is_alive():
                process.kill()


def _pool() -> ProcessPoolExecutor:
    # spawn, not fork: the server has threads (decode workers, the journal's) a fork would copy mid-step.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


class ShadowQueue(Generic[T]):
    """Finals waiting for the shadow, oldest first, at most ``max_pending``; what is given up is
    counted by reason: ``load`` (the primary was overloaded), ``backlog`` (too many waiting)."""

    def __init__(self, max_pending: int = 32):
        self.max_pending = max_pending
        self._waiting: collections.deque[T] = collections.deque()
        self.skipped: collections.Counter[str] = collections.Counter()

    def offer(self, item: T, overloaded: bool) -> None:
        if overloaded:
            self.skipped["load"] += 1
            return
        if len(self._waiting) >= self.max_pending:
            self._waiting.popleft()
            self.skipped["backlog"] += 1
        self._waiting.append(item)

    def take(self, overloaded: bool) -> T | None:
        """The oldest waiting item, or None; while the primary is overloaded, every waiting item
        is given up instead (they would compete with it for the cores)."""
        if overloaded:
            self.skipped["load"] += len(self._waiting)
            self._waiting.clear()
        return self._waiting.popleft() if self._waiting else None

    def __len__(self) -> int:
        return len(self._waiting)
