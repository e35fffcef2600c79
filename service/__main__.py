"""`python -m service`: uvicorn on GAN_HOST:GAN_PORT, with a drain on SIGTERM.

SIGTERM (or Ctrl-C): /readyz turns 503 at once and new requests get 503, while requests already accepted
finish, for up to GAN_DRAIN_TIMEOUT_S; then uvicorn stops and the process exits. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.auth import ApiKeyError
from service.logs import configure_logging
from service.main import create_app
from service.settings import Settings
from service.state import AppState
from service.tracing import TracingError

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        self.state.draining = True  # from this instant: /readyz 503, new requests 503
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)  # wakes the loop from the signal handler

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        # Step 1. Intake is closed at the door (state.draining): new requests get 503.
        # Step 2. Requests already accepted run to their response, through batchers that stay open: an
        #         accepted request may still be building its latents and must not find its batcher closed.
        # Step 3. Close the batchers (their queues are empty by now unless the timeout passed), then hand
        #         over to uvicorn's own shutdown.
        timeout = self.state.settings.drain_timeout_s
        started = time.monotonic()
        log.info("draining: %d requests in flight, up to %.1f s", self.state.inflight, timeout)
        while self.state.inflight > 0 and time.monotonic() - started < timeout:
            await asyncio.sleep(0.01)
        complete = self.state.inflight == 0
        await self.state.repository.drain(max(0.0, timeout - (time.monotonic() - started)))
        log.info("drained in %.2f s (complete: %s)", time.monotonic() - started, complete)
        self.should_exit = True


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as error:
        sys.exit(f"invalid GAN_* settings: {error}")
    configure_logging(settings)  # GAN_LOG_FORMAT lines, uvicorn's too (log_config=None below)
    try:
        app = create_app(settings)
    except (ApiKeyError, TracingError) as error:
        sys.exit(str(error))
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5, access_log=False, log_config=None,
    )  # fmt: skip
    DrainingServer(config, app.state.gan).run()


if __name__ == "__main__":
    main()
