"""`python -m service`: uvicorn on GAN_HOST:GAN_PORT, with a drain on SIGTERM (service.drain).

SIGTERM (or Ctrl-C): /readyz turns 503 at once, new requests get 503 with `Retry-After`, and every response
says `Connection: close`; connections keep being read and answered for GAN_DRAIN_GRACE_S (less once none is
open) while requests already accepted finish, for up to GAN_DRAIN_TIMEOUT_S; then uvicorn stops and the
process exits. A second signal stops at once.
"""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from service.auth import ApiKeyError
from service.drain import CloseWhileDraining, DrainingServer
from service.logs import configure_logging
from service.main import create_app
from service.settings import Settings
from service.tracing import TracingError


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
    state = app.state.gan
    config = uvicorn.Config(
        CloseWhileDraining(app, state), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5, access_log=False, log_config=None,
    )  # fmt: skip
    DrainingServer(config, state).run()


if __name__ == "__main__":
    main()
