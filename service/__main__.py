"""`python -m service`: uvicorn on GAN_HOST:GAN_PORT, with a drain on SIGTERM (service.drain).

SIGTERM (or Ctrl-C): /readyz turns 503 at once, new requests get 503 with `Retry-After`, and every response
says `Connection: close`; connections keep being read and answered for GAN_DRAIN_GRACE_S (less once none is
open) while requests already accepted finish, for up to GAN_DRAIN_TIMEOUT_S; then uvicorn stops and the
process exits. A second signal stops at once.

GAN_WORKERS > 1: this process supervises that many workers, each this same module (service.workers).
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
from service.workers import (
    WorkerHeader,
    WorkerServer,
    listen_socket,
    supervise,
    worker_index,
    worker_settings,
)


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as error:
        names = sorted({f"GAN_{e['loc'][0]}".upper() for e in error.errors() if e["loc"]})
        sys.exit(f"invalid GAN_* settings{' (' + ', '.join(names) + ')' if names else ''}: {error}")
    configure_logging(settings)  # GAN_LOG_FORMAT lines, uvicorn's too (log_config=None below)
    worker = worker_index()
    if settings.workers > 1 and worker is None:
        sys.exit(supervise(settings))
    if worker is not None:
        settings = worker_settings(settings)
    try:
        app = create_app(settings)
    except (ApiKeyError, TracingError) as error:
        sys.exit(str(error))
    state = app.state.gan
    served = app if worker is None else WorkerHeader(app, worker)
    config = uvicorn.Config(
        CloseWhileDraining(served, state), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5, access_log=False, log_config=None,
    )  # fmt: skip
    if worker is None:
        DrainingServer(config, state).run()
        return
    try:
        sock = listen_socket(settings)  # SO_REUSEPORT: each worker listens on the same port
    except OSError as error:
        sys.exit(f"worker {worker}: cannot bind GAN_HOST:GAN_PORT ({settings.host}:{settings.port}): {error}")
    WorkerServer(config, state).run(sockets=[sock])


if __name__ == "__main__":
    main()
