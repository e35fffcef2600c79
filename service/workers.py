"""GAN_WORKERS > 1: a supervisor and N worker processes serving one GAN_HOST:GAN_PORT.

`python -m service` with GAN_WORKERS = N > 1 becomes a small supervisor (`supervise`) that starts N children,
each the same `python -m service` marked as worker i (`_GAN_WORKER=i`): a whole service of its own (settings,
ONNX Runtime sessions, batchers, event loop, the SIGTERM drain of service.drain), so the Python work of
parsing, latents and encoding runs on every core instead of one. N = 1 runs no supervisor: one process, as
before.

Why this mechanism:
- Each worker binds GAN_HOST:GAN_PORT itself with SO_REUSEPORT (`listen_socket`), so the kernel spreads new
  connections over the workers by their addresses. One socket shared by N asyncio accept loops is not spread:
  a loop woken by a new connection accepts the whole backlog at once, so a burst of clients (a load balancer
  opening its keep-alive pool) lands on one worker. A worker joins the group only once its models are loaded
  (uvicorn listens after the lifespan), so no connection waits on a worker that is still starting. The
  supervisor holds one more SO_REUSEPORT socket bound and never listening: the port is checked once, at start,
  with a clear error, and no other program can take it between two worker starts.
- uvicorn's own `--workers` supervisor runs plain uvicorn servers, not this service's DrainingServer, restarts
  a dead worker without bound and does not report the workers' exit status; the supervisor here is short and
  keeps all three.
- gRPC (GAN_GRPC_PORT): every worker serves it; grpcio binds with SO_REUSEPORT by default, so the kernel
  spreads gRPC connections the same way, and each worker's drain answers its own calls.

The supervisor makes a fresh PROMETHEUS_MULTIPROC_DIR (removed at exit): every worker's metrics go to files
there and each worker's /metrics sums them all (service.metrics); a worker that exits is marked dead so its
live gauges stop counting. SIGTERM (or SIGINT) on the supervisor is forwarded once to every worker, each runs
the drain, and the supervisor exits when all have, with the worst exit status; a second signal is forwarded
too (each worker then stops at once). A worker that exits on its own after it served is restarted (its
state is its own: sessions reload, dataset jobs resume from SQLite), at most RESTARTS times in RESTART_WINDOW_S;
beyond that, or if a worker exits before it was ever ready (a configuration error that a restart repeats), the
supervisor drains the others and exits non-zero, so that Kubernetes restarts the pod.

What cannot be per worker: model control calls (service.control) and creating or deleting dataset jobs
(service.datasets.runner) answer 409 naming GAN_WORKERS; worker 0 alone resumes unfinished dataset jobs and
expires old ones; every worker reads jobs and shards from SQLite.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.drain import DrainingServer
from service.runtime import intra_op_threads
from service.settings import Settings

log = logging.getLogger("service.workers")

WORKER_ENV = "_GAN_WORKER"  # set by the supervisor: this process is worker i (not a GAN_* setting)
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTARTS, RESTART_WINDOW_S = 5, 60.0
POLL_S = 0.1
PR_SET_PDEATHSIG = 1


def worker_index() -> int | None:
    """This process's worker index when a supervisor started it; None in a single process or the supervisor."""
    value = os.environ.get(WORKER_ENV)
    return None if value is None else int(value)


def runs_dataset_jobs() -> bool:
    """Whether this process resumes and expires dataset jobs: a single process, or worker 0."""
    return worker_index() in (None, 0)


def worker_settings(settings: Settings) -> Settings:
    """A worker's settings: with GAN_INTRA_OP_THREADS unset (0), each worker's sessions share out its part
    of the CPUs (the CPUs // GAN_WORKERS, then // GAN_RUNNERS, at least 1 per run)."""
    if settings.intra_op_threads:
        return settings
    threads = intra_op_threads(0, settings.runners, settings.workers)
    return settings.model_copy(update={"intra_op_threads": threads})


def listen_socket(settings: Settings) -> socket.socket:
    """A TCP socket bound to GAN_HOST:GAN_PORT with SO_REUSEPORT (not yet listening)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def ready_marker(directory: Path, pid: int) -> Path:
    return directory / f"ready-{pid}"


class WorkerServer(DrainingServer):
    """The DrainingServer of one worker: says it is ready (the supervisor's marker) once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            ready_marker(Path(os.environ[METRICS_ENV]), os.getpid()).touch()


class WorkerHeader:
    """ASGI wrapper: every HTTP response says which worker answered (`X-Worker: i`)."""

    def __init__(self, app: ASGIApp, index: int) -> None:
        self.app, self.header = app, (b"x-worker", str(index).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


def exit_status(code: int) -> int:
    """A child's returncode as a shell would report it (killed by signal s: 128 + s)."""
    return code if code >= 0 else 128 - code


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM (and drains) if the supervisor dies without forwarding a signal."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings, self.directory = settings, directory
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.pending: list[int] = []  # signals received, not yet forwarded
        self.stopping = False
        self.status = 0
        self.gave_up = False  # stopping because a worker failed, not because of a signal
        self.restarts: deque[float] = deque()

    def start(self, index: int) -> None:
        env = os.environ | {WORKER_ENV: str(index), METRICS_ENV: str(self.directory)}
        self.workers[index] = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            process_group=0,  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("worker %d started (pid %d)", index, self.workers[index].pid)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.pending.append(sig)

    def signal_all(self, sig: int) -> None:
        for process in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def forward(self) -> None:
        """Each signal received, to every worker: the first starts their drains, a second stops them now."""
        while self.pending:
            sig = self.pending.pop(0)
            if not self.stopping:
                log.info("signal %s: draining %d workers", signal.Signals(sig).name, len(self.workers))
            self.stopping = True
            self.signal_all(sig)

    def stop_all(self, status: int) -> None:
        """Give up: drain the other workers (one SIGTERM, however many give up) and exit with `status`."""
        self.status = max(self.status, status)
        self.gave_up = True
        if not self.stopping:
            self.stopping = True
            self.signal_all(signal.SIGTERM)

    def exited(self, index: int, process: subprocess.Popen[bytes], code: int) -> None:
        del self.workers[index]
        mark_process_dead(process.pid, str(self.directory))  # type: ignore[no-untyped-call]
        marker = ready_marker(self.directory, process.pid)
        was_ready = marker.exists()
        marker.unlink(missing_ok=True)
        if self.stopping:
            # A worker that the give-up's own SIGTERM killed before it could drain says nothing new: the
            # status stays the failure's.
            if not (self.gave_up and exit_status(code) == 128 + signal.SIGTERM):
                self.status = max(self.status, exit_status(code))
            return
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if not was_ready:
            log.error("worker %d exited with %d before it was ready: stopping the others", index, code)
            self.stop_all(exit_status(code) or 1)
        elif len(self.restarts) >= RESTARTS:
            log.error(
                "worker %d exited with %d, the %d-th restart within %g s: giving up, stopping the others",
                index, code, RESTARTS + 1, RESTART_WINDOW_S,
            )  # fmt: skip
            self.stop_all(exit_status(code) or 1)
        else:
            log.warning("worker %d (pid %d) exited with %d: restarting it", index, process.pid, code)
            self.restarts.append(now)
            self.start(index)

    def run(self) -> int:
        for index in range(self.settings.workers):
            self.start(index)
        while self.workers:
            self.forward()
            for index, process in list(self.workers.items()):
                code = process.poll()
                if code is not None:
                    self.exited(index, process, code)
            time.sleep(POLL_S)
        return self.status


def supervise(settings: Settings) -> int:
    """Run GAN_WORKERS workers on GAN_HOST:GAN_PORT until they have all exited; the worst exit status."""
    try:
        holder = listen_socket(settings)  # bound, never listening: it takes no connections
    except OSError as error:
        log.error("cannot bind GAN_HOST:GAN_PORT (%s:%d): %s", settings.host, settings.port, error)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="gan-metrics-"))
    supervisor = Supervisor(settings, directory)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.on_signal)
    log.info("%d workers on %s:%d", settings.workers, settings.host, settings.port)
    try:
        return supervisor.run()
    finally:
        holder.close()
        shutil.rmtree(directory, ignore_errors=True)
