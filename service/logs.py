"""Log lines: structured JSON (GAN_LOG_FORMAT=json) or text, each carrying the request id of the request it
was written in, and the trace and span ids where a span is active.

The request id: the caller's `X-Request-ID` when it is 1-128 visible ASCII characters, otherwise a new one
(a random version-4 UUID as 32 hex digits; a caller's unusable id is replaced, with a warning line naming it, rather than refused: a request
id is a tracing aid, not a reason to fail a request). It is returned in the `X-Request-ID` response header
and held in a context variable for as long as the request runs, so every line logged on its behalf carries
it (work shared by many requests, such as a batch on a runner thread, carries none). gRPC calls take it from
their `x-request-id` metadata the same way.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import error_response
from service.settings import Settings

HEADER = b"x-request-id"
VALID_ID = re.compile(rb"[!-~]{1,128}")  # visible ASCII, no spaces: safe in a header and a log line
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger"}

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
log = logging.getLogger("service.access")


_ids = random.Random()  # seeded from os.urandom, and again in every forked child: ids differ per process
os.register_at_fork(after_in_child=_ids.seed)
UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits


def new_id() -> str:
    """A version-4 UUID's 32 hex digits (uuid.uuid4().hex's format), from a seeded PRNG: os.urandom per id
    (uuid4) was a syscall on every request, and a request id is a tracing aid, not a secret."""
    bits = (_ids.getrandbits(128) & UUID4_CLEAR) | (0x4000 << 64) | (0x8000 << 48)
    return f"{bits:032x}"


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def chosen_id(given: bytes | None) -> tuple[str, str | None]:
    """(the request id, why the caller's was replaced or None)."""
    if given is not None and VALID_ID.fullmatch(given):
        return given.decode("ascii"), None
    new = new_id()
    if given is None:
        return new, None
    return new, f"X-Request-ID {given[:140]!r} is not 1-128 visible ASCII characters: replaced by {new}"


class RequestContext(logging.Filter):
    """Puts request_id (and trace_id, span_id while a span is active) on every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.request_id = request_id
        ids = tracing.current_ids()  # None at once while tracing is off
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


class TextFormatter(logging.Formatter):
    """The text format, with the request's ids at the end of the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={getattr(record, key)}" for key in ("request_id", "trace_id") if hasattr(record, key)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure_logging(settings: Settings) -> None:
    """The root logger at GAN_LOG_LEVEL, writing GAN_LOG_FORMAT lines to stderr (uvicorn's loggers included,
    when uvicorn is given log_config=None)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContext())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(TEXT_FORMAT, rename_fields=JSON_FIELDS))
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


@contextmanager
def rpc_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> Iterator[None]:
    """A gRPC call's request id, from its `x-request-id` metadata or new."""
    given = next((v for k, v in metadata or () if k == "x-request-id" and isinstance(v, str)), None)
    request_id, replaced = chosen_id(given.encode("latin-1", "replace") if given is not None else None)
    with request_scope(request_id):
        if replaced:
            log.warning(replaced)
        yield


class RequestId:
    """Chooses the request's id, holds it while the request runs, returns it, and (GAN_ACCESS_LOG) logs one
    line per request: method, path, status and duration."""

    def __init__(self, app: ASGIApp, access_log: bool) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        request_id, replaced = chosen_id(given)
        token = REQUEST_ID.set(request_id)
        if replaced:
            log.warning(replaced)
        header, status, started = (HEADER, request_id.encode("ascii")), 0, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug. The id stays set, so the server's own error line (logged in this task) carries it too.
            if not status:
                await error_response(500, "internal server error", None)(scope, receive, send_with_id)
            raise
        if self.access_log:
            milliseconds = (time.perf_counter() - started) * 1000
            fields = {"method": scope["method"], "path": scope["path"], "status": status}
            log.info(
                "%s %s %d %.1f ms",
                *fields.values(),
                milliseconds,
                extra=fields | {"ms": round(milliseconds, 3)},
            )
        REQUEST_ID.reset(token)
