"""Dynamic batcher: one queue, one collecting task and one future per request; batches are filled with rows.

A request of n rows may be split across batches and many small requests share one. A batch closes when it
holds `max_batch_rows` rows or when its oldest request has waited `max_wait_s`. Up to `runners` batches are
computed at once, each on its own worker thread (ONNX Runtime sessions take concurrent `run` calls), so the
event loop keeps accepting, parsing and answering meanwhile, and a batch is collected only when a runner is
free to take it: under load it holds everything that arrived during the previous computations.

A batch that leaves nothing queued and finds other runners idle is split into one part per idle runner
(`split_rows`: at least that many rows a part), so a lone large request runs on every runner; a batch that
is the only interactive one queued or computing goes to `infer_alone` (a session with a thread per CPU), so a
lone small one does too, beside background batches as well (they run at the lowest priority).

A second, background lane (`enqueue(..., background=True)`: dataset jobs) only fills idle capacity, on
runners and low-priority threads of its own; service.background_lane holds it and says how it yields to
interactive work.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from opentelemetry.trace import Span

from service import tracing
from service.background_lane import BackgroundLane
from service.batch_rows import (
    BACKGROUND_BATCH_ROWS,
    BatchFailed,
    BatchObserver,
    Chunks,
    DeadlineExceeded,
    Draining,
    Feeds,
    NullObserver,
    QueuedRequest,
    QueueFull,
    cut_rows,
    lower_priority,
)

__all__ = [  # what callers import from here
    "BACKGROUND_BATCH_ROWS", "BatchFailed", "Batcher", "DeadlineExceeded", "Draining", "Feeds", "QueueFull",
    "lower_priority",
]  # fmt: skip


class Batcher:
    def __init__(
        self,
        infer: Callable[[Feeds], np.ndarray],
        *,
        max_batch_rows: int,
        max_wait_s: float,
        max_queue_rows: int,
        initial_rows_per_s: float = 1000.0,
        observer: BatchObserver | None = None,
        name: str = "model",
        runners: int = 1,
        inline_rows: int = 0,
        split_rows: int = 0,
        infer_alone: Callable[[Feeds], np.ndarray] | None = None,
        background_runners: int | None = None,
        background_nice: int = 19,
        background_batch_rows: int | None = None,
        provider: str = "",
    ) -> None:
        self._infer = infer
        self._infer_alone = infer_alone or infer  # for an interactive batch computed while no other is
        self.name, self.provider = name, provider  # as the batch spans name them
        self.max_batch_rows, self.max_wait_s, self.max_queue_rows = max_batch_rows, max_wait_s, max_queue_rows
        self._observer = observer or NullObserver()
        self._queue: deque[QueuedRequest] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.runners, self.inline_rows, self.split_rows = runners, inline_rows, split_rows
        self._slots = asyncio.Semaphore(runners)
        self._executor = ThreadPoolExecutor(runners, thread_name_prefix=f"infer-{name}")
        self._background = BackgroundLane(  # its own queue, runners and (low-priority) threads
            name,
            self._queue,
            runners=runners if background_runners is None else max(1, background_runners),
            nice=background_nice,
            # Background batches are bigger: each batch costs the event loop a hand-off, and nobody waits on
            # their latency (they run on runners of their own).
            batch_rows=background_batch_rows or max(max_batch_rows, BACKGROUND_BATCH_ROWS),
        )
        self._worker: asyncio.Task[None] | None = None
        self._background_worker: asyncio.Task[None] | None = None
        self._computing: set[asyncio.Task[None]] = set()
        self._inflight: list[Chunks] = []  # the batches being computed, of both lanes
        self._closed = False
        self.rows_per_s = initial_rows_per_s  # measured drain rate, smoothed

    @property
    def queued_rows(self) -> int:
        """Interactive rows waiting (what the 429 limit and Retry-After count)."""
        return self._queued_rows

    @property
    def background_rows(self) -> int:
        """Background rows waiting."""
        return self._background.rows

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._run())
        self._background_worker = loop.create_task(self._run_background())

    def retry_after_s(self, extra_rows: int = 0) -> int:
        """Seconds until the rows ahead (plus `extra_rows`) are drained at the measured rate."""
        return max(1, math.ceil((self._queued_rows + extra_rows) / max(self.rows_per_s, 1e-3)))

    async def submit(self, feeds: Feeds, n: int, timeout_s: float) -> np.ndarray:
        """Queue n rows; returns the (n, ...) output. Cancelling the caller drops the rows not yet computed."""
        return await self.enqueue(feeds, n, timeout_s)

    def enqueue(
        self, feeds: Feeds, n: int, timeout_s: float, background: bool = False
    ) -> asyncio.Future[np.ndarray]:
        """Queue n rows now; the future gets the (n, ...) output. Cancelling it drops the rows not yet computed.

        `background`: the low-priority lane (service.background_lane); `timeout_s` may be math.inf.
        """
        if self._closed:
            raise Draining("the service is draining")
        if not background and self._queued_rows and self._queued_rows + n > self.max_queue_rows:
            raise QueueFull(self._queued_rows, self.retry_after_s(n))
        now = time.monotonic()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        span = None if background else tracing.request_span()
        request = QueuedRequest(
            feeds, n, future, now, now + timeout_s, pending=n, background=background, span=span
        )
        self._idle.clear()
        if background:
            self._background.add(request)
            future.add_done_callback(lambda _: self._forget(request))
            return future
        self._background.interactive_at = now
        self._queue.append(request)
        self._queued_rows += n
        self._observer.queue_rows(self._queued_rows)
        self._wakeup.set()
        return future

    def _forget(self, request: QueuedRequest) -> None:
        """A cancelled background request leaves the queue at once (a deleted job's rows stop counting)."""
        if self._background.forget(request) and self._quiet():
            self._idle.set()

    def _quiet(self) -> bool:
        return not self._queue and not self._background.queue and not self._inflight

    async def _collect(self) -> Chunks:
        """Wait for a full batch or the oldest request's wait limit, then take up to max_batch_rows rows."""
        while not self._queue:
            if self._quiet():
                self._idle.set()
            self._wakeup.clear()
            await self._wakeup.wait()
        close_at = self._queue[0].enqueued_at + self.max_wait_s
        while self._queued_rows < self.max_batch_rows and (remaining := close_at - time.monotonic()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        chunks = self._take(self._queue, background=False)
        self._observer.queue_rows(self._queued_rows)
        if self._background.may_go():  # woken only when it would not go back to sleep
            self._background.wakeup.set()
        return chunks

    def _take(self, queue: deque[QueuedRequest], background: bool) -> Chunks:
        """Up to max_batch_rows rows (background_batch_rows in the background lane) from the head of one lane's
        queue; requests already answered (cancelled, failed) or past their deadline are dropped on the way."""
        chunks: Chunks = []
        rows, now = 0, time.monotonic()
        limit = self._background.batch_rows if background else self.max_batch_rows
        while queue and rows < limit:
            request = queue[0]
            if request.future.done() or (request.next_row == 0 and now > request.deadline):
                queue.popleft()
                self._count(background, -(request.n - request.next_row))
                if not request.future.done():
                    request.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    self._observer.dropped("deadline")
                elif not background:
                    self._observer.dropped("cancelled" if request.future.cancelled() else "failed")
                continue
            if request.next_row == 0 and not background:
                self._observer.queue_wait(now - request.enqueued_at)
            take = min(request.n - request.next_row, limit - rows)
            chunks.append((request, request.next_row, request.next_row + take))
            request.next_row += take
            self._count(background, -take)
            rows += take
            if request.next_row == request.n:
                queue.popleft()
        return chunks

    def _count(self, background: bool, rows: int) -> None:
        if background:
            self._background.rows += rows
        else:
            self._queued_rows += rows

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # a runner is free: collect what has arrived for it
            try:
                chunks = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            if not chunks:
                self._slots.release()
                continue
            for part in await self._spread(chunks):
                self._launch(part, background=False)

    async def _spread(self, chunks: Chunks) -> list[Chunks]:
        """The batch in one part per idle runner (each part's runner slot taken here, without waiting) when it
        leaves nothing queued and holds at least `split_rows` rows per part: a lone large request then runs on
        every idle runner's threads instead of one runner's. Rows are computed independently (the runner's
        buckets rely on it too), so the bytes do not change; each part fills its rows of the requests."""
        rows = sum(b - a for _, a, b in chunks)
        parts = 1
        while (
            self.split_rows and not self._queue and rows >= (parts + 1) * self.split_rows
            and not self._slots.locked()
        ):  # fmt: skip
            await self._slots.acquire()  # not locked: returns at once
            parts += 1
        return [chunks] if parts == 1 else cut_rows(chunks, rows, parts)

    async def _run_background(self) -> None:
        """The background lane: a batch whenever it may go (BackgroundLane.next_batch)."""
        lane = self._background
        while True:
            chunks = await lane.next_batch(lambda: self._take(lane.queue, background=True))
            if chunks:
                self._launch(chunks, background=True)
            elif self._quiet():
                self._idle.set()

    def _launch(self, chunks: Chunks, background: bool) -> None:
        if background:
            self._background.started()
        self._inflight.append(chunks)
        task = asyncio.get_running_loop().create_task(self._compute(chunks, background))
        self._computing.add(task)
        task.add_done_callback(self._computing.discard)

    async def _compute(self, chunks: Chunks, background: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            names = chunks[0][0].feeds.keys()
            feeds = {k: np.concatenate([r.feeds[k][a:b] for r, a, b in chunks]) for k in names}
            rows = sum(b - a for _, a, b in chunks)
            batch = self._batch_span(chunks, rows)  # None unless tracing is on
            started = time.perf_counter()
            try:
                # the only interactive batch: the wide session (a job's batches run at the lowest priority,
                # so it takes their CPU rather than sharing a runner's share of it)
                alone = (
                    not background and not self._queue and len(self._inflight) - self._background.busy == 1
                )
                infer = self._infer_alone if alone else self._infer
                if alone and rows <= self.inline_rows:
                    # The only interactive batch, tiny: computing it here saves two thread hand-offs (~0.1 ms
                    # of a 1 ms request); no interactive request waits for the loop meanwhile, and a job's
                    # next batch at most for this one's ~0.5 ms.
                    out = infer(feeds)
                else:
                    executor = self._background.executor if background else self._executor
                    out = await loop.run_in_executor(executor, infer, feeds)
                if len(out) != rows:
                    raise BatchFailed(f"model returned {len(out)} rows for a batch of {rows}")
            except Exception as error:  # every request in the failed batch gets the error
                failure = (
                    error if isinstance(error, BatchFailed) else BatchFailed(f"inference failed: {error}")
                )
                tracing.end_batch(batch, time.perf_counter() - started, failure)
                for request, _, _ in chunks:
                    if not request.future.done():
                        request.future.set_exception(failure)
                self._inflight.remove(chunks)
                return
            # Not in a `finally`: on cancellation close() still needs the in-flight list to fail it.
            self._inflight.remove(chunks)
            seconds = time.perf_counter() - started
            tracing.end_batch(batch, seconds)
            if not background:  # the interactive lane's figures: background batches run at low priority
                self._observer.batch(rows, seconds)
                rate = self.runners * rows / max(seconds, 1e-6)  # all runners drain at about this rate
                self.rows_per_s = 0.8 * self.rows_per_s + 0.2 * rate
            offset = 0
            for request, a, b in chunks:
                if not request.future.done():
                    if request.out is None:
                        request.out = np.empty((request.n, *out.shape[1:]), dtype=out.dtype)
                    request.out[a:b] = out[offset : offset + b - a]
                    request.pending -= b - a
                    if request.pending == 0:
                        request.future.set_result(request.out)
                offset += b - a
        finally:
            if background:
                self._background.finished()  # its runner's slot released, the lane woken
            else:
                self._slots.release()
            if self._quiet():
                self._idle.set()

    def _batch_span(self, chunks: Chunks, rows: int) -> Span | None:
        """The batch's span, linked to its traced requests' spans (those with a span are interactive)."""
        spans = [r.span for r, _, _ in chunks if r.span is not None and not r.future.done()]
        if not spans:
            return None
        wait_s = time.monotonic() - min(r.enqueued_at for r, _, _ in chunks)
        return tracing.start_batch(self.name, spans, len(chunks), rows, self.provider, wait_s)

    async def drain(self, timeout_s: float) -> bool:
        """Stop intake, let queued interactive work finish for up to timeout_s, then fail the rest; True if all
        finished. Queued background rows fail at once (a dataset job resumes from its shards on disk)."""
        self._closed = True
        self._background.fail(Draining("the service is draining"))
        if self._quiet():
            self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            finished = True
        except TimeoutError:
            finished = False
        await self.close()
        return finished

    async def close(self) -> None:
        self._closed = True
        for task in [self._worker, self._background_worker, *self._computing]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        inflight = [request for chunks in self._inflight for request, _, _ in chunks]
        for request in inflight + list(self._queue) + list(self._background.queue):
            if not request.future.done():
                request.future.set_exception(Draining("the service stopped before this request was computed"))
        self._queue.clear()
        self._queued_rows = 0
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._background.close()  # its queue cleared, its threads shut down
