from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.batcher import Batcher, BatchFailed, DeadlineExceeded, Draining, QueueFull
from tests.support import eventually


class Model:
    """Doubles its input; records batch sizes and when it was called; can be held busy or made to fail.

    `started` counts the batches that reached the model, held at `gate` or not.
    """

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[float] = []
        self.called_at: list[float] = []
        self.started = 0
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            self.started += 1
            self.called_at.append(time.monotonic())
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(len(feeds["z"]))
        self.seen.extend(feeds["z"][:, 0].tolist())
        return feeds["z"] * 2


def held_and_queued(batcher: Batcher, model: Model, held: int, queued: int) -> Awaitable[None]:
    """Wait until `held` batches have reached the (held) model and `queued` rows wait behind them."""
    return eventually(
        lambda: model.started == held and batcher.queued_rows == queued,
        what=lambda: (
            f"{held} batches held and {queued} rows queued (now {model.started}, {batcher.queued_rows})"
        ),
    )


async def drain_then_release(batcher: Batcher, model: Model) -> bool:
    """Start a drain while the model is held, check that it waits, then release the model; its result."""
    draining = asyncio.ensure_future(batcher.drain(30.0))
    await eventually(lambda: batcher._closed, what="the drain to close intake")
    assert not draining.done()  # the held work is not finished, so neither is the drain
    model.gate.set()
    return await draining


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"z": np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, 1)}


def run(test: Callable[[Batcher, Model], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        model = Model()
        options = {"max_batch_rows": 4, "max_wait_s": 0.05, "max_queue_rows": 100} | kwargs
        batcher = Batcher(model, **options)
        batcher.start()
        try:
            return await test(batcher, model)
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_split_and_merge() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()  # hold the worker so everything queues first
        big = asyncio.ensure_future(batcher.submit(rows(0, 10), 10, 5))
        small = [asyncio.ensure_future(batcher.submit(rows(100 + i, 1), 1, 5)) for i in range(3)]
        await held_and_queued(batcher, model, held=1, queued=9)  # big's first 4 rows in the model
        model.gate.set()
        out = await big
        np.testing.assert_array_equal(out, rows(0, 10)["z"] * 2)  # reassembled in order across batches
        for i, task in enumerate(small):
            np.testing.assert_array_equal(await task, rows(100 + i, 1)["z"] * 2)
        assert sum(model.batches) == 13 and max(model.batches) == 4
        # The tail of `big` (rows 8, 9) merged with the first two n=1s into one full batch; the last n=1 alone.
        assert model.batches == [4, 4, 4, 1]
        assert model.seen == [*range(10), 100, 101, 102]

    run(test)


def test_full_batch_closes_at_once_and_partial_after_the_wait() -> None:
    """With max_wait_s = 30 and a 5 s deadline, only a batch that closed without waiting is computed; then
    with max_wait_s = 0.2, a lone row is computed alone, and not before its wait has passed."""

    async def test(batcher: Batcher, model: Model) -> float:
        out = await batcher.submit(rows(0, 4), 4, 5)  # max_batch_rows: no waiting
        np.testing.assert_array_equal(out, rows(0, 4)["z"] * 2)
        assert model.batches == [4]
        batcher.max_wait_s = 0.2
        submitted = time.monotonic()
        await batcher.submit(rows(10, 1), 1, 5)  # waits max_wait_s for company, none comes
        assert model.batches == [4, 1]
        return model.called_at[-1] - submitted

    waited = run(test, max_wait_s=30.0)
    # A lower bound the batcher guarantees however loaded the machine (asyncio may fire a timer a clock
    # tick early, hence the margin); no upper bound: a slow machine only waits longer.
    assert waited >= 0.2 - 1e-3


def test_an_error_reaches_every_request_of_the_batch() -> None:
    async def test(batcher: Batcher, model: Model) -> list[BaseException | Any]:
        model.fail = True
        tasks = [batcher.submit(rows(i, 1), 1, 5) for i in range(3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(test)
    assert all(isinstance(r, BatchFailed) and "boom" in str(r) for r in results)


def test_cancelled_requests_are_not_computed() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit(rows(0, 4), 4, 5))  # occupies the worker
        await held_and_queued(batcher, model, held=1, queued=0)
        gone = asyncio.ensure_future(batcher.submit(rows(50, 2), 2, 5))
        kept = asyncio.ensure_future(batcher.submit(rows(60, 1), 1, 5))
        await held_and_queued(batcher, model, held=1, queued=3)
        gone.cancel()  # the client went away while queued
        model.gate.set()
        await first
        await kept
        assert 50.0 not in model.seen and 60.0 in model.seen
        assert batcher.queued_rows == 0

    run(test)


def test_deadline_passes_while_queued() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit(rows(0, 4), 4, 5))
        await held_and_queued(batcher, model, held=1, queued=0)
        late = asyncio.ensure_future(batcher.submit(rows(9, 1), 1, 0.05))
        await held_and_queued(batcher, model, held=1, queued=1)
        queued_by = time.monotonic()
        await eventually(lambda: time.monotonic() > queued_by + 0.05, what="late's deadline to pass")
        model.gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late
        assert 9.0 not in model.seen

    run(test)


def test_full_queue_gives_a_retry_after_from_the_drain_rate() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        batcher.rows_per_s = 10.0  # as if measured: 10 rows per second
        held = [asyncio.ensure_future(batcher.submit(rows(0, 4), 4, 30))]
        await held_and_queued(batcher, model, held=1, queued=0)
        held += [asyncio.ensure_future(batcher.submit(rows(i, 10), 10, 30)) for i in range(3)]
        await held_and_queued(batcher, model, held=1, queued=30)
        assert batcher.queued_rows == 30
        with pytest.raises(QueueFull) as error:
            await batcher.submit(rows(0, 5), 5, 30)  # 30 + 5 > 32
        assert error.value.retry_after_s == 4  # ceil((30 + 5) / 10)
        batcher.rows_per_s = 100.0
        with pytest.raises(QueueFull) as error:
            await batcher.submit(rows(0, 5), 5, 30)
        assert error.value.retry_after_s == 1
        model.gate.set()
        await asyncio.gather(*held)

    run(test, max_queue_rows=32)


def test_drain_finishes_queued_work_then_refuses() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        queued = [asyncio.ensure_future(batcher.submit(rows(i, 3), 3, 5)) for i in range(4)]
        await held_and_queued(batcher, model, held=1, queued=8)
        assert await drain_then_release(batcher, model)
        assert all(task.done() and task.exception() is None for task in queued)
        with pytest.raises(Draining):
            await batcher.submit(rows(0, 1), 1, 5)

    run(test)


def test_drain_timeout_fails_what_is_left() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        tasks = [asyncio.ensure_future(batcher.submit(rows(i, 4), 4, 5)) for i in range(3)]
        await held_and_queued(batcher, model, held=1, queued=8)
        assert not await batcher.drain(0.05)  # the model stays held: the drain cannot finish
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, Draining) for r in results)

    run(test)


def test_metrics_observer_sees_waits_and_batches() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[tuple[str, float]] = []

        def queue_rows(self, rows: int) -> None:
            self.events.append(("queue", rows))

        def queue_wait(self, seconds: float) -> None:
            self.events.append(("wait", seconds))

        def batch(self, rows: int, seconds: float) -> None:
            self.events.append(("batch", rows))

        def dropped(self, reason: str) -> None:
            self.events.append((reason, 0))

    recorder = Recorder()

    async def test(batcher: Batcher, model: Model) -> None:
        await asyncio.gather(*(batcher.submit(rows(i, 2), 2, 5) for i in range(2)))

    run(test, observer=recorder)
    kinds = [kind for kind, _ in recorder.events]
    assert (
        kinds.count("wait") == 2 and recorder.events[-1] == ("batch", 4) and ("queue", 0) in recorder.events
    )


def test_runners_compute_batches_at_once_and_reassemble_in_order() -> None:
    """With 2 runners two batches are in flight together; a request split across them comes back in order."""
    in_flight, most, calls = 0, 0, 0
    lock = threading.Lock()
    both_started = threading.Barrier(2, timeout=30)

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal in_flight, most, calls
        with lock:
            in_flight, calls = in_flight + 1, calls + 1
            most, first_two = max(most, in_flight), calls <= 2
        if first_two:
            both_started.wait()  # the first two batches meet here: only possible if they run concurrently
        with lock:
            in_flight -= 1
        return feeds["z"] * 2

    async def main() -> tuple[np.ndarray, bool]:
        batcher = Batcher(infer, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=100, runners=2)
        batcher.start()
        try:
            out = await batcher.submit(rows(0, 8), 8, 5)  # two batches of 4
            idle = batcher._idle.is_set()
            return out, idle
        finally:
            await batcher.close()

    out, idle = asyncio.run(main())
    np.testing.assert_array_equal(out, rows(0, 8)["z"] * 2)
    assert most == 2 and idle


def test_a_lone_batch_splits_across_idle_runners_and_comes_back_in_order() -> None:
    """split_rows: with both runners idle and nothing queued, a 9-row batch runs as 5 + 4 rows on two runners
    at once (they meet at a barrier); with split_rows above half the batch, or 0, it runs whole."""

    def split(split_rows: int, n: int) -> tuple[list[int], np.ndarray]:
        model = Model()
        met = threading.Barrier(2, timeout=30) if split_rows and n >= 2 * split_rows else None

        def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
            if met is not None:
                met.wait()  # only possible if both parts run concurrently
            return model(feeds)

        async def main() -> np.ndarray:
            batcher = Batcher(
                infer, max_batch_rows=16, max_wait_s=0.0, max_queue_rows=100, runners=2, split_rows=split_rows
            )
            batcher.start()
            try:
                out = await batcher.submit(rows(0, n), n, 5)
                await eventually(lambda: batcher._idle.is_set(), what="the batcher to be idle")
                return out
            finally:
                await batcher.close()

        out = asyncio.run(main())
        return sorted(model.batches), out

    batches, out = split(4, 9)
    assert batches == [4, 5]
    np.testing.assert_array_equal(out, rows(0, 9)["z"] * 2)
    for split_rows, n in ((5, 9), (0, 9)):
        batches, out = split(split_rows, n)
        assert batches == [9]
        np.testing.assert_array_equal(out, rows(0, 9)["z"] * 2)


def test_a_batch_computed_alone_goes_to_infer_alone_and_others_do_not() -> None:
    """infer_alone takes a batch while no other is queued or computing; with one held in a runner, the next
    batch (and the held one's successor while work waits) takes `infer`."""
    model, alone = Model(), []

    def infer_alone(feeds: dict[str, np.ndarray]) -> np.ndarray:
        alone.append(len(feeds["z"]))
        return model(feeds)

    async def main() -> None:
        batcher = Batcher(model, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=100, runners=2,
                          infer_alone=infer_alone)  # fmt: skip
        batcher.start()
        try:
            np.testing.assert_array_equal(await batcher.submit(rows(0, 3), 3, 5), rows(0, 3)["z"] * 2)
            model.gate.clear()
            held = asyncio.ensure_future(batcher.submit(rows(0, 2), 2, 5))  # alone: infer_alone, held
            await eventually(lambda: model.started == 2, what="the held batch to start")
            second = asyncio.ensure_future(batcher.submit(rows(10, 1), 1, 5))  # one in flight: infer
            await eventually(lambda: model.started == 3, what="the second batch to start")
            model.gate.set()
            await asyncio.gather(held, second)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert alone == [3, 2] and sorted(model.batches) == [1, 2, 3]


def test_an_interactive_batch_beside_background_ones_only_still_goes_to_infer_alone() -> None:
    model, alone = Model(), []

    def infer_alone(feeds: dict[str, np.ndarray]) -> np.ndarray:
        alone.append(len(feeds["z"]))
        return feeds["z"] * 2  # not held at the model's gate

    async def main() -> None:
        batcher = Batcher(model, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=100, runners=2,
                          infer_alone=infer_alone)  # fmt: skip
        batcher.start()
        try:
            model.gate.clear()
            job = batcher.enqueue(rows(0, 2), 2, math.inf, background=True)  # held in the model
            await eventually(lambda: model.started == 1, what="the background batch to start")
            out = await batcher.submit(rows(5, 1), 1, 5)
            np.testing.assert_array_equal(out, rows(5, 1)["z"] * 2)
            model.gate.set()
            await job
        finally:
            await batcher.close()

    asyncio.run(main())
    assert alone == [1] and model.batches == [2]


def test_split_parts_cover_every_row_of_several_requests_once() -> None:
    """The cut of a batch of several requests: parts of near-equal size, each row in exactly one part."""

    async def main() -> tuple[list[Any], bool]:
        batcher = Batcher(lambda f: f["z"], max_batch_rows=64, max_wait_s=0.0, max_queue_rows=100, runners=3,
                          split_rows=2)  # fmt: skip
        loop = asyncio.get_running_loop()
        requests = [_request(loop, n) for n in (3, 1, 5)]
        await batcher._slots.acquire()  # the collecting runner's own slot, as in Batcher._run
        parts = await batcher._spread([(requests[0], 0, 3), (requests[1], 0, 1), (requests[2], 1, 5)])
        return parts, batcher._slots.locked()

    parts, all_taken = asyncio.run(main())
    assert [sum(b - a for _, a, b in part) for part in parts] == [3, 2, 3]
    covered = [(r.n, row) for part in parts for r, a, b in part for row in range(a, b)]
    assert covered == [(3, 0), (3, 1), (3, 2), (1, 0), (5, 1), (5, 2), (5, 3), (5, 4)]
    assert all_taken  # the two extra parts took the two other runners' slots


def _request(loop: asyncio.AbstractEventLoop, n: int) -> Any:
    from service.batch_rows import QueuedRequest

    return QueuedRequest(rows(0, n), n, loop.create_future(), 0.0, math.inf, pending=n)


def test_drain_waits_for_every_batch_in_flight() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        work = [asyncio.ensure_future(batcher.submit(rows(4 * i, 4), 4, 5)) for i in range(3)]
        await held_and_queued(batcher, model, held=2, queued=4)  # two batches held in the runners, one queued
        assert await drain_then_release(batcher, model) is True
        assert all(w.done() and not w.exception() for w in work)

    run(test, runners=2)


def test_a_tiny_batch_on_an_idle_batcher_runs_on_the_event_loop() -> None:
    """inline_rows: an idle batcher computes a 1-row batch in the loop's thread; bigger or busy ones go to a runner."""
    threads: list[tuple[int, str]] = []

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        threads.append((len(feeds["z"]), threading.current_thread().name))
        return feeds["z"] * 2

    async def main() -> None:
        batcher = Batcher(
            infer, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=100, runners=2, inline_rows=1
        )
        batcher.start()
        try:
            await batcher.submit(rows(0, 1), 1, 5)  # idle, 1 row: inline
            await batcher.submit(rows(0, 3), 3, 5)  # 3 rows: a runner
        finally:
            await batcher.close()

    asyncio.run(main())
    loop_thread = threading.main_thread().name
    assert threads[0] == (1, loop_thread)
    assert threads[1][0] == 3 and threads[1][1] != loop_thread


def test_a_tiny_batch_beside_background_work_still_runs_on_the_event_loop() -> None:
    """inline_rows counts interactive work only: a job's batch computing and its rows queued (the lane yields to
    interactive traffic) do not send a 1-row request through two thread hand-offs; a second interactive batch
    in flight does."""
    gate, threads = threading.Event(), []

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        first = float(feeds["z"][0, 0])
        threads.append((first, threading.current_thread().name))
        if first == 200.0 or first == 300.0:
            gate.wait(30)
        return feeds["z"] * 2

    async def main() -> None:
        batcher = Batcher(
            infer, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=100, runners=2, inline_rows=1,
            background_runners=1, background_batch_rows=4,
        )  # fmt: skip
        batcher.start()
        try:
            job = batcher.enqueue(rows(200, 8), 8, math.inf, background=True)
            await eventually(lambda: len(threads) == 1, what="the first background batch in the model")
            assert batcher.background_rows == 4  # the second waits
            np.testing.assert_array_equal(await batcher.submit(rows(0, 1), 1, 5), rows(0, 1)["z"] * 2)
            held = asyncio.ensure_future(batcher.submit(rows(300, 2), 2, 5))  # an interactive batch in flight
            await eventually(lambda: len(threads) == 3, what="the held interactive batch in the model")
            np.testing.assert_array_equal(await batcher.submit(rows(1, 1), 1, 5), rows(1, 1)["z"] * 2)
            gate.set()
            await held, job
        finally:
            await batcher.close()

    asyncio.run(main())
    loop_thread = threading.main_thread().name
    ran = dict(threads)
    assert ran[200.0] != loop_thread and ran[0.0] == loop_thread  # beside the job: inline
    assert ran[300.0] != loop_thread and ran[1.0] != loop_thread  # beside another interactive batch: a runner


# --- the background lane (dataset jobs) ----------------------------------------------------------------------


class GatedModel:
    """Doubles its input; each batch waits at the gate of its first row's value (open unless closed first) and
    records the thread priority it ran at."""

    def __init__(self) -> None:
        self.gates: dict[float, threading.Event] = {}
        self.entered: list[float] = []
        self.nice: dict[float, int] = {}
        self._lock = threading.Lock()

    def hold(self, first: float) -> threading.Event:
        gate = self.gates[first] = threading.Event()
        return gate

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        first = float(feeds["z"][0, 0])
        with self._lock:
            self.entered.append(first)
            self.nice[first] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        gate = self.gates.get(first)
        if gate is not None:
            gate.wait(30)
        return feeds["z"] * 2


def lanes(test: Callable[[Batcher, GatedModel], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        model = GatedModel()
        options = {"max_batch_rows": 4, "max_wait_s": 0.0, "max_queue_rows": 8, "runners": 1}
        options |= {"background_batch_rows": 4} | kwargs
        batcher = Batcher(model, **options)
        batcher.start()
        try:
            return await test(batcher, model)
        finally:
            await batcher.close()

    return asyncio.run(main())


async def spin(turns: int = 20) -> None:
    """Let the event loop run every ready task a few times (the lanes decide on the loop, synchronously)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def test_interactive_rows_find_a_runner_and_go_first_while_background_work_runs() -> None:
    """Background work holding every background runner leaves the interactive runner free; while interactive rows
    wait, no background batch is taken; once they are gone the background rows are computed, all in order."""

    async def test(batcher: Batcher, model: GatedModel) -> None:
        c1, a = model.hold(200.0), model.hold(0.0)
        job = batcher.enqueue(rows(200, 8), 8, math.inf, background=True)
        await eventually(lambda: model.entered == [200.0], what="the first background batch in the model")
        first = asyncio.ensure_future(batcher.submit(rows(0, 4), 4, 5))
        await eventually(lambda: model.entered == [200.0, 0.0], what="the interactive batch beside it")
        second = asyncio.ensure_future(batcher.submit(rows(100, 4), 4, 5))
        await eventually(lambda: batcher.queued_rows == 4, what="the second interactive request to queue")
        c1.set()  # the background runner is free again, but an interactive request waits: it must not go
        await eventually(lambda: len(batcher._inflight) == 1, what="the first background batch to finish")
        await spin()
        assert batcher.background_rows == 4 and model.entered == [200.0, 0.0]
        a.set()  # the interactive runner takes `second`; only then does the background lane go on
        await eventually(lambda: batcher.background_rows == 0, what="the background lane to resume")
        assert batcher.queued_rows == 0 and 100.0 in model.entered
        np.testing.assert_array_equal(await job, rows(200, 8)["z"] * 2)
        np.testing.assert_array_equal(await first, rows(0, 4)["z"] * 2)
        np.testing.assert_array_equal(await second, rows(100, 4)["z"] * 2)

    lanes(test, background_runners=1)


def test_background_work_alone_is_computed_on_every_background_runner_at_low_priority() -> None:
    """No interactive load: the background lane never starves; its batches run two at a time (its own runners)
    on threads at nice 19, interactive batches at the process's priority."""
    both = threading.Barrier(2, timeout=30)
    nice: list[int] = []

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if feeds["z"][0, 0] >= 1000:
            both.wait()  # the first two background batches meet: they run at once
        return feeds["z"] * 2

    async def main() -> None:
        batcher = Batcher(
            infer, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=8, runners=2, background_batch_rows=4
        )
        batcher.start()
        try:
            out = await batcher.enqueue(rows(1000, 8), 8, math.inf, background=True)
            np.testing.assert_array_equal(out, rows(1000, 8)["z"] * 2)
            assert batcher._idle.is_set() and batcher.background_rows == 0
            await batcher.submit(rows(0, 4), 4, 5)
        finally:
            await batcher.close()

    base = os.getpriority(os.PRIO_PROCESS, 0)
    asyncio.run(main())
    assert nice == [max(base, 19), max(base, 19), base]


def test_background_rows_never_fill_the_interactive_queue() -> None:
    """Background rows have no row limit and do not count toward the 429: a full-sized interactive request is
    accepted behind any amount of background work, and is computed before the background rows still waiting."""

    async def test(batcher: Batcher, model: GatedModel) -> None:
        held = model.hold(500.0)
        job = batcher.enqueue(rows(500, 100), 100, math.inf, background=True)
        await eventually(lambda: model.entered == [500.0], what="the first background batch")
        assert batcher.queued_rows == 0 and batcher.background_rows == 96
        out = await batcher.submit(rows(0, 8), 8, 5)  # max_queue_rows = 8: accepted, and answered
        np.testing.assert_array_equal(out, rows(0, 8)["z"] * 2)
        assert batcher.background_rows == 96  # the held background runner has not moved meanwhile
        held.set()
        np.testing.assert_array_equal(await job, rows(500, 100)["z"] * 2)

    lanes(test, background_runners=1)


def test_cancelled_background_rows_are_dropped_and_a_drain_fails_them_at_once() -> None:
    async def test(batcher: Batcher, model: GatedModel) -> None:
        held = model.hold(300.0)
        gone = batcher.enqueue(rows(300, 12), 12, math.inf, background=True)
        await eventually(lambda: model.entered == [300.0], what="the first background batch")
        gone.cancel()  # a deleted job: its rows not yet in a batch are never computed
        kept = batcher.enqueue(rows(400, 4), 4, math.inf, background=True)
        waiting = batcher.enqueue(rows(600, 4), 4, math.inf, background=True)
        held.set()
        np.testing.assert_array_equal(await kept, rows(400, 4)["z"] * 2)
        assert 304.0 not in model.entered and 308.0 not in model.entered
        await waiting
        model.hold(700.0)
        in_model = batcher.enqueue(rows(700, 4), 4, math.inf, background=True)
        queued = batcher.enqueue(rows(800, 4), 4, math.inf, background=True)
        await eventually(lambda: 700.0 in model.entered, what="a background batch in the model")
        draining = asyncio.ensure_future(batcher.drain(30.0))
        with pytest.raises(Draining):
            await queued  # failed at once: the drain does not wait for queued background rows
        assert not draining.done()  # ... but it does wait for the batch in flight
        model.gates[700.0].set()
        assert await draining
        np.testing.assert_array_equal(await in_model, rows(700, 4)["z"] * 2)
        with pytest.raises(Draining):
            batcher.enqueue(rows(0, 1), 1, math.inf, background=True)

    lanes(test, background_runners=1)


def test_background_batches_are_at_least_64_rows_by_default() -> None:
    """Background rows go in batches of max(max_batch_rows, 64) rows, interactive ones in max_batch_rows; the
    outputs are the same rows either way."""
    sizes: list[tuple[int, bool]] = []

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        sizes.append((len(feeds["z"]), threading.current_thread().name.startswith("infer-bg")))
        return feeds["z"] * 2

    async def main() -> None:
        batcher = Batcher(infer, max_batch_rows=4, max_wait_s=0.0, max_queue_rows=8, runners=1, name="m")
        batcher.start()
        try:
            out = await batcher.enqueue(rows(0, 600), 600, math.inf, background=True)
            np.testing.assert_array_equal(out, rows(0, 600)["z"] * 2)
            await batcher.submit(rows(0, 6), 6, 5)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert sizes == [(64, True)] * 9 + [(24, True), (4, False), (2, False)]


@pytest.mark.parametrize("interactive_first", [False, True])
def test_background_batches_leave_a_runner_free_while_interactive_requests_come(
    interactive_first: bool,
) -> None:
    """With no interactive traffic the background lane uses every runner; within INTERACTIVE_RECENT_S of an
    interactive request it uses all but one, so the next interactive batch finds a free core."""
    lock, running, most = threading.Lock(), [0], [0]

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        background = threading.current_thread().name.startswith("infer-bg")
        with lock:
            running[0] += background
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # long enough for the second runner to start if it may
        with lock:
            running[0] -= background
        return feeds["z"] * 2

    async def main() -> None:
        batcher = Batcher(
            infer, max_batch_rows=2, max_wait_s=0.0, max_queue_rows=8, runners=2, background_batch_rows=2
        )
        batcher.start()
        try:
            if interactive_first:
                await batcher.submit(rows(0, 1), 1, 5)
            out = await batcher.enqueue(rows(0, 8), 8, math.inf, background=True)
            np.testing.assert_array_equal(out, rows(0, 8)["z"] * 2)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert most[0] == (1 if interactive_first else 2)
