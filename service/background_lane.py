"""A batcher's background lane: the low-priority path dataset jobs use to fill idle capacity, with its queue,
its runners and their threads, and how it yields to interactive work (service.batcher computes its batches).

Its rows (`enqueue(..., background=True)`: dataset jobs) wait in their own queue, which is drawn from only
while no interactive row waits; its batches run on runners of their own (`background_runners`, default
`runners`), on threads at the lowest CPU priority (nice 19), in batches of up to `background_batch_rows`
(default 64, as interactive ones: ONNX Runtime ran 512-row batches 10-35 % slower per row, more than the event
loop's extra hand-offs cost), so an interactive request never waits for a runner held by background work and
the OS gives it the CPU first. While interactive requests come (one in the last INTERACTIVE_RECENT_S),
background batches use all their runners but one, so an interactive batch finds a core that no background
batch holds. Background rows have no deadline and no row limit (their callers bound them), never count toward
the interactive queue's 429 limit or its drain-rate estimate, and a drain fails them at once instead of
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.batch_rows import INTERACTIVE_RECENT_S, Chunks, QueuedRequest, lower_priority


class BackgroundLane:
    """One batcher's background lane: its queue, its runners' slots and low-priority threads, and when its
    next batch may go (the batcher takes the batch's rows, computes it and reports its end here)."""

    def __init__(
        self, name: str, interactive: deque[QueuedRequest], *, runners: int, nice: int, batch_rows: int
    ) -> None:
        self.queue: deque[QueuedRequest] = deque()
        self.rows = 0  # rows waiting
        self.runners, self.batch_rows = runners, batch_rows
        self.busy = 0  # batches computing now
        self.interactive_at = -math.inf  # when the last interactive request came (time.monotonic)
        self._interactive = interactive  # the batcher's interactive queue: the lane waits while it holds rows
        self.slots = asyncio.Semaphore(runners)
        self.wakeup = asyncio.Event()
        # Threads start on first use.
        self.executor = ThreadPoolExecutor(
            runners, thread_name_prefix=f"infer-bg-{name}", initializer=lower_priority, initargs=(nice,)
        )

    def add(self, request: QueuedRequest) -> None:
        self.queue.append(request)
        self.rows += request.n
        self.wakeup.set()

    def forget(self, request: QueuedRequest) -> bool:
        """A cancelled request leaves the queue at once (a deleted job's rows stop counting): True if it was
        still queued."""
        if request.future.cancelled() and request in self.queue:
            self.queue.remove(request)
            self.rows -= request.n - request.next_row
            return True
        return False

    async def next_batch(self, take: Callable[[], Chunks]) -> Chunks:
        """Wait for one of the lane's runners to be free and no interactive row to wait, then `take` a batch;
        its runner's slot stays held for it (released here if the batch came out empty)."""
        await self.slots.acquire()
        try:
            while not self.may_go():
                self.wakeup.clear()
                if self.queue and not self._interactive:  # yielding: until the traffic is past
                    past = self.interactive_at + INTERACTIVE_RECENT_S - time.monotonic()
                    with contextlib.suppress(TimeoutError):  # or a batch ends, or new rows come
                        await asyncio.wait_for(self.wakeup.wait(), max(past, 0.001))
                else:
                    await self.wakeup.wait()
            chunks = take()
        except BaseException:
            self.slots.release()
            raise
        if not chunks:
            self.slots.release()
        return chunks

    def may_go(self) -> bool:
        """Rows wait, no interactive row does, and the lane is not yielding to interactive traffic."""
        return bool(self.queue) and not self._interactive and not self.yields()

    def yields(self) -> bool:
        """While interactive requests come (one in the last INTERACTIVE_RECENT_S), background batches use at
        most all but one of their runners, so an interactive batch finds a core no background batch holds."""
        share = self.runners - 1 if self.runners > 1 else 1
        recent = time.monotonic() - self.interactive_at < INTERACTIVE_RECENT_S
        return recent and self.busy >= share

    def started(self) -> None:
        self.busy += 1

    def finished(self) -> None:
        """A batch of the lane ended: its runner is free, and the lane may go again."""
        self.slots.release()
        self.busy -= 1
        self.wakeup.set()

    def fail(self, error: Exception) -> None:
        """Every queued request fails with `error` and leaves the queue."""
        for request in self.queue:
            if not request.future.done():
                request.future.set_exception(error)
        self.queue.clear()
        self.rows = 0

    def close(self) -> None:
        self.queue.clear()
        self.rows = 0
        self.executor.shutdown(wait=False, cancel_futures=True)
