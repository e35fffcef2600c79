"""Request ids and log lines (service.logs): X-Request-ID accepted, generated or replaced, returned, and on every
log line written for the request (its own, not a concurrent one's), as JSON or text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from pythonjsonlogger.json import JsonFormatter
from starlette.concurrency import run_in_threadpool

from service import tracing
from service.logs import (
    JSON_FIELDS,
    TEXT_FORMAT,
    RequestContext,
    TextFormatter,
    configure_logging,
    current_request_id,
    new_id,
    rpc_request_id,
)
from service.main import create_app
from service.settings import BUNDLED_MODELS, Settings
from tests.support import asgi_client

GENERATED = re.compile(r"[0-9a-f]{32}")
test_log = logging.getLogger("service.test")


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(BUNDLED_MODELS / "ring8", root / "ring8")
    return root


Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """The JSON lines the service's loggers have written so far in the test, parsed (a call reads them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContext())
    handler.setFormatter(JsonFormatter(TEXT_FORMAT, rename_fields=JSON_FIELDS))
    logger = logging.getLogger("service")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def app_with_logging_route(settings: Settings) -> FastAPI:
    """The service's app plus a route that logs on the event loop, after an await, and from a worker thread."""
    app = create_app(settings)

    @app.get("/log/{word}")
    async def log_here(word: str) -> dict[str, str]:
        test_log.info("before %s", word)
        await asyncio.sleep(0.01)  # concurrent requests interleave here
        await run_in_threadpool(test_log.info, "thread %s", word)
        return {"word": word}

    return app


def test_given_ids_are_returned_and_on_every_line_of_their_own_request(ring_dir: Path, lines: Lines) -> None:
    words = [f"w{i}" for i in range(6)]

    async def scenario() -> list[httpx.Response]:
        async with asgi_client(app_with_logging_route(Settings(model_dir=ring_dir, access_log=True))) as c:
            calls = [c.get(f"/log/{w}", headers={"X-Request-ID": f"id-{w}"}) for w in words]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(scenario())
    assert [r.headers["x-request-id"] for r in responses] == [f"id-{w}" for w in words]
    written = lines()
    ours = [line for line in written if line["logger"] in ("service.test", "service.access")]
    assert len(ours) == 3 * len(words)  # before, thread, and the access line, per request
    for line in ours:
        word = (
            line["message"].split()[-1] if line["logger"] == "service.test" else line["path"].split("/")[-1]
        )
        assert line["request_id"] == f"id-{word}", line
        assert {"time", "level", "logger", "message"} <= set(line) and "trace_id" not in line
    access = [line for line in ours if line["logger"] == "service.access"]
    assert {(a["method"], a["status"], a["level"]) for a in access} == {("GET", 200, "INFO")}
    assert all("request_id" not in line for line in written if line not in ours)  # start-up lines have none


def test_ids_are_generated_when_absent_and_replaced_when_unusable(ring_dir: Path, lines: Lines) -> None:
    bad: list[str | bytes] = ["has spaces", "x" * 129, "", "é".encode()]

    async def scenario() -> list[httpx.Response]:
        async with asgi_client(create_app(Settings(model_dir=ring_dir, access_log=True))) as c:
            plain = await c.post("/generate", json={"model": "ring8", "format": "json"})
            replaced = [await c.get("/healthz", headers={"X-Request-ID": value}) for value in bad]
            return [plain, *replaced]

    responses = asyncio.run(scenario())
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(GENERATED.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
    written = lines()
    access = {line["request_id"]: line for line in written if line["logger"] == "service.access"}
    assert access[ids[0]]["path"] == "/generate" and access[ids[0]]["status"] == 200
    warnings = [line for line in written if line["level"] == "WARNING"]
    assert [w["request_id"] for w in warnings] == ids[1:]  # the warning is a line of that request
    for warning, new in zip(warnings, ids[1:], strict=True):
        assert "not 1-128 visible ASCII characters: replaced by " + new in warning["message"]
    assert "has spaces" in warnings[0]["message"]


def test_a_128_character_id_is_kept_and_no_access_line_by_default(ring_dir: Path, lines: Lines) -> None:
    given = "a-Z_0.9:" * 16

    async def scenario() -> httpx.Response:
        async with asgi_client(create_app(Settings(model_dir=ring_dir))) as c:
            return await c.get("/healthz", headers={"X-Request-ID": given})

    assert asyncio.run(scenario()).headers["x-request-id"] == given
    assert lines() and not [line for line in lines() if line["logger"] == "service.access"]


def test_an_unhandled_error_is_answered_with_the_request_id(ring_dir: Path) -> None:
    app = create_app(Settings(model_dir=ring_dir))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/boom", headers={"X-Request-ID": "boom-1"})

    response = asyncio.run(scenario())
    assert response.status_code == 500 and response.headers["x-request-id"] == "boom-1"
    assert response.json()["detail"] == "internal server error"


def test_lines_carry_the_trace_id_while_tracing_is_on(ring_dir: Path, lines: Lines) -> None:
    previous = tracing.configure()
    tracing.use(TracerProvider())

    async def scenario() -> httpx.Response:
        async with asgi_client(app_with_logging_route(Settings(model_dir=ring_dir, access_log=True))) as c:
            return await c.get("/log/traced")

    try:
        response = asyncio.run(scenario())
    finally:
        tracing.use(previous)
    trace_id, span_id = response.headers["traceparent"].split("-")[1:3]
    ours = [line for line in lines() if line.get("request_id") == response.headers["x-request-id"]]
    assert len(ours) == 3
    assert all((line["trace_id"], line["span_id"]) == (trace_id, span_id) for line in ours)


def test_text_format_and_configure_logging() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(Settings(log_format="text", log_level="warning"))
        (handler,) = root.handlers
        assert isinstance(handler.formatter, TextFormatter) and root.level == logging.WARNING
        configure_logging(Settings())
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter) and root.level == logging.INFO
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.request_id = "r-1"
    assert TextFormatter("%(levelname)s %(name)s: %(message)s").format(record) == (
        "INFO service.x: hello you [request_id=r-1]"
    )


def test_grpc_metadata_gives_the_request_id() -> None:
    assert current_request_id() is None
    with rpc_request_id([("x-request-id", "g-1"), ("traceparent", "00-...")]):
        assert current_request_id() == "g-1"
    with rpc_request_id(None):
        generated = current_request_id()
        assert generated is not None and GENERATED.fullmatch(generated)
    assert current_request_id() is None


def test_generated_ids_are_version_4_uuids_and_a_forked_child_draws_its_own() -> None:
    import os
    import uuid

    ids = [new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).hex == i for i in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next id, then exit at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    childs = os.read(read, 64).decode()
    os.close(read)
    assert GENERATED.fullmatch(childs) and childs != new_id()
