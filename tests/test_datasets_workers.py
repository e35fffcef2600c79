"""The worker processes of dataset jobs: light (no service, no ONNX Runtime, no torch), at the job's priority,
errors come back as themselves, a dead worker is replaced, a cancelled call leaves its worker usable."""

from __future__ import annotations

import asyncio
import errno
import os
import signal

import pytest

from service.datasets.workers import WorkerFailed, Workers


def loaded() -> tuple[bool, bool, bool, int]:
    import sys

    names = set(sys.modules)
    return (
        "onnxruntime" in names,
        "torch" in names,
        "service.main" in names,
        os.getpriority(os.PRIO_PROCESS, 0),
    )


def pid() -> int:
    return os.getpid()


def sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_workers_are_light_and_low_priority_and_errors_come_back() -> None:
    async def main() -> None:
        workers = Workers(2, 19)
        try:
            onnxruntime, torch, service, nice = await workers.call(loaded)
            assert not onnxruntime and not torch and not service
            assert nice == max(19, os.getpriority(os.PRIO_PROCESS, 0))
            with pytest.raises(ZeroDivisionError):
                await workers.call(divmod, 1, 0)
            with pytest.raises(OSError) as failed:  # a shard's failed write: the job names the errno (ENOSPC)
                await workers.call(os.fsync, 987_654)  # no such file descriptor
            assert failed.value.errno == errno.EBADF
            pids = set(await asyncio.gather(*(workers.call(pid) for _ in range(6))))
            assert len(pids) <= 2 and len(workers.started) == 2
        finally:
            await workers.close()

    asyncio.run(main())


def test_a_dead_worker_fails_its_call_and_is_replaced() -> None:
    async def main() -> None:
        workers = Workers(1, 0)
        try:
            first = await workers.call(pid)
            os.kill(first, signal.SIGKILL)
            with pytest.raises(WorkerFailed, match="died"):
                await workers.call(pid)
            assert await workers.call(pid) != first
        finally:
            await workers.close()

    asyncio.run(main())


def test_a_cancelled_call_lets_its_worker_finish_and_serve_again() -> None:
    async def main() -> None:
        workers = Workers(1, 0)
        try:
            first = await workers.call(pid)
            call = asyncio.ensure_future(workers.call(sleep, 0.3))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await workers.call(pid) == first  # the same process, once its call was done
        finally:
            await workers.close()

    asyncio.run(main())
