"""The lane a model's calls take turns in and the step batcher (decoder/batching.py), and the
engine's admission from what the lane measures: logic with threads and the scripted model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from decoder.api import DecodeOptions
from decoder.batching import EAGER, ROUTINE, URGENT, ComputeLane, DecodeWithdrawn, StepBatcher
from streaming.engine import Engine
from streaming.session import DecodeRequest
from tests.scripted import ScriptedModel, speak


def _hold(lane: ComputeLane, seconds: float) -> threading.Thread:
    """A routine call holding the lane from another thread; returns once it holds it."""
    holding = threading.Event()

    def call() -> None:
        with lane.turn("hold", priority=ROUTINE):
            holding.set()
            time.sleep(seconds)

    thread = threading.Thread(target=call)
    thread.start()
    assert holding.wait(5)
    return thread


def test_waiting_calls_go_in_order_of_urgency_then_arrival():
    lane = ComputeLane(width=1)
    order: list[str] = []
    holder = _hold(lane, 0.3)
    threads = []
    cases = (("partial 1", ROUTINE), ("final 1", URGENT), ("first words", EAGER), ("partial 2", ROUTINE), ("final 2", URGENT))
    for name, priority in cases:
        def call(name: str = name, priority: int = priority) -> None:
            with lane.turn("call", priority=priority):
                order.append(name)
        threads.append(threading.Thread(target=call))
        threads[-1].start()
        time.sleep(0.03)  # arrive in this order while the lane is held
    for thread in (holder, *threads):
        thread.join(5)
    assert order == ["final 1", "final 2", "first words", "partial 1", "partial 2"]
    assert lane.stats["call"].calls == 5 and lane.stats["call"].wait_seconds > 0


def test_partials_never_take_the_last_place():
    lane = ComputeLane(width=2)
    holder = _hold(lane, 0.5)  # a partial's call: one place left, kept for finals and steps
    entered: list[str] = []

    def call(name: str, priority: int) -> None:
        with lane.turn("call", priority=priority):
            entered.append(name)

    partial = threading.Thread(target=call, args=("partial", ROUTINE))
    partial.start()
    time.sleep(0.1)
    assert entered == []  # waits although a place is free
    final = threading.Thread(target=call, args=("final", URGENT))
    final.start()
    final.join(0.2)
    assert entered == ["final"]  # took the free place at once
    for thread in (holder, partial):
        thread.join(5)
    assert entered == ["final", "partial"]


def test_a_request_s_urgency_decides_its_calls_priority_and_counts_its_waits():
    lane = ComputeLane(width=1)
    holder = _hold(lane, 0.2)
    with lane.request(True) as waited:
        with lane.turn("call"):
            pass
    holder.join(5)
    assert waited[0] >= 0.1


def test_no_partial_call_starts_while_a_final_is_in_progress():
    lane = ComputeLane(width=2)
    entered = threading.Event()

    def partial() -> None:
        with lane.request(False), lane.turn("call"):
            entered.set()

    with lane.request(True):  # a final between two of its calls: the lane is idle
        thread = threading.Thread(target=partial)
        thread.start()
        assert not entered.wait(0.2)
    assert entered.wait(5)
    thread.join(5)


def test_a_withdrawn_request_s_next_call_raises_and_its_turn_goes_to_the_next():
    lane = ComputeLane(width=1)
    holder = _hold(lane, 0.3)
    withdrawn, outcome, ran = threading.Event(), [], []

    def partial() -> None:
        with lane.request(False, withdrawn):
            try:
                with lane.turn("call"):
                    ran.append("partial")
            except DecodeWithdrawn:
                outcome.append("withdrawn")

    def later() -> None:
        with lane.request(False), lane.turn("call"):
            ran.append("later")

    waiting = threading.Thread(target=partial)
    waiting.start()
    time.sleep(0.05)
    behind = threading.Thread(target=later)  # queued behind the partial
    behind.start()
    time.sleep(0.05)
    withdrawn.set()  # while it waits for its turn
    for thread in (holder, waiting, behind):
        thread.join(5)
    assert outcome == ["withdrawn"] and ran == ["later"]
    with lane.request(False, withdrawn), pytest.raises(DecodeWithdrawn):  # and before it asks
        lane.turn("call").__enter__()
    with lane.turn("call"):  # the lane is free again: nothing was left holding it
        pass


def test_a_withdrawn_step_raises_before_joining_a_batch():
    batcher, lane, batches = _steps()
    withdrawn = threading.Event()
    withdrawn.set()
    with lane.request(False, withdrawn), batcher.decoding(), pytest.raises(DecodeWithdrawn):
        batcher.run(1)
    assert batches == [] and batcher.run(2) == 20


def test_cancelling_a_decode_withdraws_it_from_the_model():
    model = ScriptedModel(compute_s=0.3)
    engine = Engine(model, workers=2)

    async def withdraw_one() -> None:
        first = asyncio.ensure_future(engine.decode(_request(1, final=False)))
        second = asyncio.ensure_future(engine.decode(_request(2, final=False)))  # waits for the first's encode
        await asyncio.sleep(0.1)
        second.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second

    try:
        asyncio.run(withdraw_one())
        deadline = time.monotonic() + 5
        while engine.stats.withdrawn < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.withdrawn == 1 and engine.stats.decodes == 1 and engine.stats.failures == 0
        assert model.lane.stats["encoder"].calls == 1  # the withdrawn decode never ran its encode
    finally:
        engine.close()


def _steps(fails_on: int | None = None):
    """A batcher over integer 'steps' (the answer is the step times ten) recording its batches."""
    lane = ComputeLane(width=1)
    batches: list[tuple[int, ...]] = []

    def alone(step: int) -> int:
        batches.append((step,))
        if step == fails_on:
            raise RuntimeError(f"step {step} broke")
        return step * 10

    def together(steps: Sequence[int]) -> list[int]:
        batches.append(tuple(steps))
        if fails_on in steps:
            raise RuntimeError("a step broke the batch")
        return [s * 10 for s in steps]

    return StepBatcher(alone, together, lane, max_rows=4), lane, batches


def test_steps_waiting_together_run_as_one_batch_and_each_gets_its_own_answer():
    batcher, lane, batches = _steps()
    holder = _hold(lane, 0.3)  # the lane is busy: the steps gather meanwhile
    answers: dict[int, int] = {}
    threads = [threading.Thread(target=lambda s=s: answers.__setitem__(s, batcher.run(s))) for s in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in (holder, *threads):
        thread.join(5)
    assert answers == {s: s * 10 for s in range(6)}
    assert max(len(b) for b in batches) == 4  # max_rows, then the rest in the next batch
    assert sorted(s for b in batches for s in b) == list(range(6))
    assert lane.stats["decoder step"].rows == 6


def test_a_lone_step_runs_at_once_alone():
    batcher, lane, batches = _steps()
    assert batcher.run(7) == 70
    assert batches == [(7,)]


def test_a_failing_step_fails_only_its_own_caller():
    batcher, lane, batches = _steps(fails_on=3)
    holder = _hold(lane, 0.2)
    answers: dict[int, object] = {}

    def run(step: int) -> None:
        try:
            answers[step] = batcher.run(step)
        except RuntimeError as error:
            answers[step] = error

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in (holder, *threads):
        thread.join(5)
    assert answers[1] == 10 and answers[2] == 20 and answers[4] == 40
    assert isinstance(answers[3], RuntimeError)
    assert batcher.retried == 1


def _request(id: int, final: bool) -> DecodeRequest:
    return DecodeRequest(id, id, speak("alpha"), (), (), final, DecodeOptions())


async def _decode_all(engine: Engine, requests: list[DecodeRequest]) -> None:
    await asyncio.gather(*(engine.decode(r) for r in requests))


def test_new_streams_are_refused_while_finals_wait_for_the_model():
    model = ScriptedModel(compute_s=0.3)
    engine = Engine(model, workers=8, max_wait_s=0.4)
    try:
        # Partials that wait are by design: many of them leave admission open.
        asyncio.run(_decode_all(engine, [_request(i, final=False) for i in range(6)]))
        assert not engine.overloaded
        # Finals that queue behind one another (0.3 s of compute each, one at a time) are not.
        asyncio.run(_decode_all(engine, [_request(i, final=True) for i in range(8)]))
        assert engine.overloaded
        assert engine.stats.recent_wait(time.monotonic() + 30) < 0.01  # a quiet machine takes streams again
    finally:
        engine.close()


@pytest.mark.parametrize("width", [0, -1])
def test_a_lane_has_room_for_a_call(width: int):
    with pytest.raises(ValueError, match="at least 1"):
        ComputeLane(width)


