"""Run CPU work inline or on a worker thread, by its size in rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")

# Below this many rows, latents and encoding run inline: a thread hop costs more than the work, and the
# work is mostly Python holding the GIL, so a thread would only make the event loop wait for it.
INLINE_ROWS = 32


async def offload(rows: int, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(*args, **kwargs)`: inline for up to INLINE_ROWS rows, else on the thread pool."""
    if rows <= INLINE_ROWS:
        return function(*args, **kwargs)
    return await run_in_threadpool(function, *args, **kwargs)
