"""What a batch is made of: a queued request and the row ranges of it a batch holds, the cut of a batch into
parts of near-equal rows, the batcher's errors and its observer (service.batcher runs them)."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from opentelemetry.trace import Span

Feeds = dict[str, np.ndarray]


class QueueFull(Exception):
    def __init__(self, queued_rows: int, retry_after_s: int) -> None:
        super().__init__(f"queue full: {queued_rows} rows waiting; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class Draining(Exception):
    pass


class BatchFailed(Exception):
    pass


class BatchObserver(Protocol):
    def queue_rows(self, rows: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch(self, rows: int, seconds: float) -> None: ...
    def dropped(self, reason: str) -> None: ...


class NullObserver:
    def queue_rows(self, rows: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, rows: int, seconds: float) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class QueuedRequest:
    feeds: Feeds
    n: int
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    deadline: float
    next_row: int = 0  # first row not yet handed to a batch
    pending: int = 0  # rows not yet computed
    out: np.ndarray | None = field(default=None, repr=False)
    background: bool = False
    span: Span | None = field(default=None, repr=False)  # the request's span, where tracing is on


INTERACTIVE_RECENT_S = 0.25  # background work leaves a runner free this long after an interactive request
BACKGROUND_BATCH_ROWS = 64  # a background batch's rows (at least max_batch_rows): service.batcher says why
Chunks = list[tuple[QueuedRequest, int, int]]  # one batch: (request, first row, end row) per request in it


def lower_priority(nice: int) -> None:
    """Give the calling thread a lower CPU priority (Linux: the nice value is per thread); best effort."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, max(nice, os.getpriority(os.PRIO_PROCESS, thread)))
    except (AttributeError, OSError):  # no setpriority on this platform, or not allowed: same priority
        pass


def cut_rows(chunks: Chunks, rows: int, parts: int) -> list[Chunks]:
    """The batch's `rows` rows, in order, as `parts` batches whose sizes differ by at most one row."""
    sizes = [round((k + 1) * rows / parts) - round(k * rows / parts) for k in range(parts)]
    cut: list[Chunks] = [[]]
    room = sizes[0]
    for request, a, b in chunks:
        while a < b:
            take = min(b - a, room)
            cut[-1].append((request, a, a + take))
            a, room = a + take, room - take
            if room == 0 and len(cut) < parts:
                cut.append([])
                room = sizes[len(cut) - 1]
    return cut
