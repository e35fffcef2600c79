"""The SIGTERM drain: every request gets an HTTP answer, and no connection is closed under a client's feet.

A keep-alive connection that the server closes while a request is on its way gets no answer at all (the
client sees a reset, or "server disconnected"): it cannot tell whether that request was served. So the drain,
in order, from the first SIGTERM (or Ctrl-C):

1. `state.draining`: `/readyz` answers 503 and every new request 503 + `Retry-After` (service.gate); from now
   on every response, 200 or not, carries `Connection: close` (`CloseWhileDraining`), so each connection is
   closed by the server right after an answer, never between two requests.
2. The listening sockets close: new connections are refused, and go to another replica.
3. For up to GAN_DRAIN_GRACE_S the connections already open keep being read and answered, so a request that
   a client sent on an idle keep-alive connection gets its 503 instead of a reset; this ends early once every
   connection has closed. Meanwhile requests accepted before SIGTERM run to their responses, through batchers
   that stay open, for up to GAN_DRAIN_TIMEOUT_S (which also bounds the grace).
4. The batchers close; uvicorn's own shutdown then closes the connections still open (idle past the grace),
   and the lifespan stops the gRPC server (service.main: its grace, then GOAWAY; during the drain its calls
   got UNAVAILABLE + `retry-after`).

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

    def stop_listening(self) -> None:
        """New connections are refused from now on; the open ones stay open (uvicorn closes them later)."""
        for server in getattr(self, "servers", []):  # absent while the lifespan is still starting
            server.close()

    async def _drain(self) -> None:
        settings = self.state.settings
        timeout = settings.drain_timeout_s
        grace = min(settings.drain_grace_s, timeout)
        started = time.monotonic()
        self.stop_listening()
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
            "drained in %.2f s (complete: %s; %d connections left open, idle, closed now)",
            time.monotonic() - started, complete, self.open_connections(),
        )  # fmt: skip
        self.should_exit = True
