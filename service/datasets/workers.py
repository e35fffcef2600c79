"""Worker processes for dataset jobs' CPU work: latents, encoding, sha256.

That work is mostly Python: in a thread of the service it would hold the GIL against the event loop, and an
interactive request would wait for it. Each worker is a plain `python -m service.datasets.workers NICE`, which
imports only what the work needs (numpy, Pillow, pyarrow, the plan and shard modules; never the service, ONNX
Runtime or the parent's `__main__`, as multiprocessing's spawn and forkserver would) and runs at that nice
value. The protocol is one pickled (function, arguments) a call on its stdin and one pickled (ok, value) back on
its stdout, each after an 8-byte length; a worker whose parent dies reads end-of-file and exits.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
HEADER = 8
PRELOAD = ("service.datasets.spec", "service.datasets.shards")  # pyarrow only for parquet: +35 MB


class WorkerFailed(RuntimeError):
    """A worker died, or its call raised something that could not be sent back."""


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def call(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self.process.stdin is not None and self.process.stdout is not None
        payload = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.write(len(payload).to_bytes(HEADER, "little") + payload)
        try:
            await self.process.stdin.drain()
            size = int.from_bytes(await self.process.stdout.readexactly(HEADER), "little")
            ok, value = pickle.loads(await self.process.stdout.readexactly(size))
        except (OSError, asyncio.IncompleteReadError) as error:
            raise WorkerFailed(
                f"a dataset worker process died (exit code {self.process.returncode})"
            ) from error
        if not ok:
            raise value if isinstance(value, BaseException) else WorkerFailed(str(value))
        result: T = value
        return result

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class Workers:
    """`size` worker processes, started on first use; `call` runs a function in an idle one."""

    def __init__(self, size: int, nice: int) -> None:
        self.size, self.nice = size, nice
        self.idle: asyncio.Queue[Worker] = asyncio.Queue()
        self.started: list[Worker] = []

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        worker = await self.acquire()
        task = asyncio.ensure_future(worker.call(function, args))
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:  # the worker finishes its call in the background, then serves again
            task.add_done_callback(lambda done: self.release(worker, done.cancelled() or done.exception()))
            raise
        except BaseException as error:
            self.release(worker, error)
            raise
        self.release(worker, None)
        return result

    async def acquire(self) -> Worker:
        """An idle worker; the first call starts them all at once (each takes a Python start-up, ~0.5 s), and a
        worker that died is replaced."""
        missing = self.size - len(self.started)
        if missing and self.idle.empty():
            spawned = await asyncio.gather(*(self.spawn() for _ in range(missing)))
            self.started.extend(spawned)
            for worker in spawned[1:]:
                self.idle.put_nowait(worker)
            return spawned[0]
        return await self.idle.get()

    def release(self, worker: Worker, error: BaseException | bool | None) -> None:
        if isinstance(error, WorkerFailed) or worker.process.returncode is not None:
            worker.kill()  # gone: the next call starts another
            self.started.remove(worker)
        else:
            self.idle.put_nowait(worker)

    async def spawn(self) -> Worker:
        path = os.pathsep.join(p for p in sys.path if p)  # what this process imports from, the worker too
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.datasets.workers", str(self.nice),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=os.environ | {"PYTHONPATH": path},
        )  # fmt: skip
        return Worker(process)

    async def close(self) -> None:
        for worker in self.started:
            worker.kill()
        await asyncio.gather(*(w.process.wait() for w in self.started), return_exceptions=True)
        self.started.clear()


def serve(nice: int) -> None:
    """The worker's loop: calls from stdin, answers on stdout (anything printed goes to stderr)."""
    from service.batcher import lower_priority

    lower_priority(nice)
    for module in PRELOAD:  # at start, not on the first call: all workers start (and import) at once
        importlib.import_module(module)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the answers
    calls = sys.stdin.buffer
    while header := calls.read(HEADER):
        call = calls.read(int.from_bytes(header, "little"))
        try:
            function, args = pickle.loads(call)
            reply = pickle.dumps((True, function(*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            try:
                reply = pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                reply = pickle.dumps((False, traceback.format_exc()), protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(len(reply).to_bytes(HEADER, "little") + reply)
        answers.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
