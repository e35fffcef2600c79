"""The SIGTERM drain: every request gets an HTTP answer, and no connection is closed under a client's feet.

A keep-alive connection that the server closes while a request is on its way gets no answer at all (the
client sees a reset, or "server disconnected"): it cannot tell whether that request was served. So the drain,
from the first SIGTERM (or Ctrl-C):

1. `state.draining`: `/readyz` answers 503 and every new request 503 + `Retry-After` (service.gate); from now
   on every response, 200 or not, carries `Connection: close` (`CloseWhileDraining`), so each connection is
   closed by the server right after an answer, never between two requests.
2. The server keeps listening and reading: a request sent on an idle keep-alive connection, or on a new one
   (a kubelet probe, a Prometheus scrape, a load balancer that has not yet seen the pod go), gets its answer.
   This lasts at least GAN_DRAIN_GRACE_S, or until no connection is open, whichever comes first; meanwhile
   requests accepted before SIGTERM run to their responses through batchers that stay open. The whole drain
   is bounded by GAN_DRAIN_TIMEOUT_S.
3. The batchers close; uvicorn's own shutdown then stops listening and closes the connections still open
   (idle past the grace), and the lifespan stops the gRPC server (service.main: its grace, then GOAWAY;
   during the drain its calls got UNAVAILABLE + `retry-after`).

The listener stays open on purpose: closed at the signal, it would refuse the probes and the scrape that the
drain promises to answer, and turn a request the client could retry anywhere (a 503) into a refused
connection, which `gan_client` retries only for seeded calls. In Kubernetes the preStop pause has already
taken the pod out of the endpoints before the signal, so new connections are rare by then.

A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.state import AppState

log = logging.getLogger("service")

CLOSE = (b"connection", b"close")


class CloseWhileDraining:
    """ASGI wrapper: while draining, every HTTP response says `Connection: close` (uvicorn then closes the
    connection once that response is sent, whatever the client asked for)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.state.draining:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        self.state.draining = True  # from this instant: /readyz 503, new requests 503, Connection: close
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)  # wakes the loop from the signal handler

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_task = loop.create_task(self._drain())

    def open_connections(self) -> int:
        return len(self.server_state.connections)

    async def _drain(self) -> None:
        settings = self.state.settings
        timeout = settings.drain_timeout_s
        grace = min(settings.drain_grace_s, timeout)
        started = time.monotonic()
        log.info(
            "draining: %d requests in flight, %d connections open; answering them for up to %.1f s, "
            "waiting for accepted work up to %.1f s",
            self.state.inflight, self.open_connections(), grace, timeout,
        )  # fmt: skip

        def finished() -> bool:
            elapsed = time.monotonic() - started
            answered = self.open_connections() == 0 or elapsed >= grace
            return (self.state.inflight == 0 and answered) or elapsed >= timeout

        while not finished():
            await asyncio.sleep(0.01)
        complete = self.state.inflight == 0
        await self.state.repository.drain(max(0.0, timeout - (time.monotonic() - started)))
        log.info(
            "drained in %.2f s (complete: %s; %d connections still open, closed now)",
            time.monotonic() - started, complete, self.open_connections(),
        )  # fmt: skip
        self.should_exit = True
