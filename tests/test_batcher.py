from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.batcher import Batcher, BatchFailed, DeadlineExceeded, Draining, QueueFull


class Model:
    """Doubles its input; records batch sizes; can be held busy or made to fail."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(len(feeds["z"]))
        self.seen.extend(feeds["z"][:, 0].tolist())
        return feeds["z"] * 2


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
        await asyncio.sleep(0.01)
        model.gate.set()
        out = await big
        np.testing.assert_array_equal(out, rows(0, 10)["z"] * 2)  # reassembled in order across batches
        for i, task in enumerate(small):
            np.testing.assert_array_equal(await task, rows(100 + i, 1)["z"] * 2)
        assert sum(model.batches) == 13 and max(model.batches) == 4
        assert model.batches[-2:] == [4, 3] or 4 in model.batches  # the tail of `big` merged with the n=1s

    run(test)


def test_full_batch_closes_at_once_and_partial_after_the_wait() -> None:
    async def test(batcher: Batcher, model: Model) -> tuple[float, float]:
        started = time.monotonic()
        await batcher.submit(rows(0, 4), 4, 5)  # max_batch_rows: no waiting
        full = time.monotonic() - started
        started = time.monotonic()
        await batcher.submit(rows(0, 1), 1, 5)  # waits max_wait_s for company
        partial = time.monotonic() - started
        return full, partial

    full, partial = run(test, max_wait_s=0.2)
    assert full < 0.1 and 0.19 <= partial < 1.0


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
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(rows(50, 2), 2, 5))
        kept = asyncio.ensure_future(batcher.submit(rows(60, 1), 1, 5))
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(batcher.submit(rows(9, 1), 1, 0.05))
        await asyncio.sleep(0.1)
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
        await asyncio.sleep(0.01)
        held += [asyncio.ensure_future(batcher.submit(rows(i, 10), 10, 30)) for i in range(3)]
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
        threading.Timer(0.05, model.gate.set).start()
        assert await batcher.drain(5.0)
        assert all(task.done() and task.exception() is None for task in queued)
        with pytest.raises(Draining):
            await batcher.submit(rows(0, 1), 1, 5)

    run(test)


def test_drain_timeout_fails_what_is_left() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        tasks = [asyncio.ensure_future(batcher.submit(rows(i, 4), 4, 5)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert not await batcher.drain(0.05)
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
    both_started = threading.Barrier(2, timeout=5)

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


def test_drain_waits_for_every_batch_in_flight() -> None:
    async def test(batcher: Batcher, model: Model) -> None:
        model.gate.clear()
        work = [asyncio.ensure_future(batcher.submit(rows(4 * i, 4), 4, 5)) for i in range(3)]
        await asyncio.sleep(0.05)  # two batches held in the runners, one queued
        threading.Timer(0.2, model.gate.set).start()
        assert await batcher.drain(5) is True
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
