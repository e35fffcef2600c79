"""Tracing (service.tracing) with the SDK's in-memory exporter: request spans and batch spans linked both ways,
the W3C trace context in and out (HTTP and gRPC), and nothing of OpenTelemetry on the path when it is off."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.batcher import Batcher
from service.main import create_app
from service.settings import BUNDLED_MODELS, Settings
from tests.support import ROOT, Hold, asgi_client, free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
BODY = {"model": "ring8", "n": 1, "format": "json"}


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding only the bundled 2-D `ring8` (small, fast to load)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(BUNDLED_MODELS / "ring8", root / "ring8")
    return root


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span finished going to an in-memory exporter; the previous provider afterwards."""
    previous = tracing.configure()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(previous)


def span_id(response: httpx.Response) -> int:
    """The request span's id, from the `traceparent` the response returned."""
    version, _, parent, flags = response.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return int(parent, 16)


def by_kind(finished: tuple[ReadableSpan, ...]) -> tuple[dict[int, ReadableSpan], list[ReadableSpan]]:
    """(request spans by span id, batch spans)."""
    requests = {s.context.span_id: s for s in finished if s.kind == SpanKind.SERVER}
    return requests, [s for s in finished if s.name.startswith("batch ")]


def test_three_requests_merged_into_one_batch_link_to_the_same_batch_span(
    ring_dir: Path, spans: InMemorySpanExporter
) -> None:
    settings = Settings(model_dir=ring_dir, runners=1, inline_rows=0)

    async def scenario() -> tuple[httpx.Response, list[httpx.Response], str]:
        app = create_app(settings)
        async with asgi_client(app) as c:
            batcher = app.state.gan.repository.get("ring8").batcher
            hold = Hold(batcher)
            first = asyncio.ensure_future(c.post("/generate", json=BODY))
            await hold.until(entered=1, queued=0)  # the first batch is held in the model
            three = [asyncio.ensure_future(c.post("/generate", json=BODY | {"seed": i})) for i in range(3)]
            await hold.until(entered=1, queued=3)  # the three wait behind it: they leave as one batch
            hold.gate.set()
            return await first, list(await asyncio.gather(*three)), batcher.provider

    first, three, provider = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in [first, *three])
    requests, batches = by_kind(spans.get_finished_spans())
    assert len(requests) == 4 and len(batches) == 2
    merged = next(b for b in batches if len(b.links) == 3)
    alone = next(b for b in batches if b is not merged)
    ids = [span_id(r) for r in three]
    assert {link.context.span_id for link in merged.links} == set(ids)
    for request in [requests[i] for i in ids]:  # and each request span links back to that batch
        assert [link.context.span_id for link in request.links] == [merged.context.span_id]
        assert request.attributes is not None
        assert request.name == "POST /generate" and request.attributes["gan.outcome"] == "ok"
        assert (request.attributes["gan.model"], request.attributes["gan.version"]) == ("ring8", 2)
        assert (request.attributes["gan.rows"], request.attributes["gan.format"]) == (1, "json")
        assert request.attributes["http.response.status_code"] == 200
    assert [link.context.span_id for link in requests[span_id(first)].links] == [alone.context.span_id]
    assert merged.parent is None and merged.context.trace_id not in {
        requests[i].context.trace_id for i in ids
    }
    attributes = dict(merged.attributes or {})
    assert (attributes["gan.batch.rows"], attributes["gan.batch.requests"]) == (3, 3)
    assert attributes["gan.batch.provider"] == provider == "CPUExecutionProvider"  # the session's own
    assert attributes["gan.batch.queue_wait_ms"] > 0 and attributes["gan.batch.run_ms"] > 0


def test_the_batcher_names_its_provider_and_marks_a_failed_batch(spans: InMemorySpanExporter) -> None:
    tracer = TracerProvider().get_tracer("test")  # request spans from elsewhere: the batcher only links

    def infer(feeds: dict[str, np.ndarray]) -> np.ndarray:
        if feeds["z"][0, 0] < 0:
            raise RuntimeError("bad rows")
        return feeds["z"] * 2

    async def scenario() -> list[Any]:
        batcher = Batcher(
            infer, max_batch_rows=4, max_wait_s=5.0, max_queue_rows=8, provider="CUDAExecutionProvider"
        )
        batcher.start()
        futures = []
        for sign in (1, 1, -1, -1):  # two batches of two rows, the second fails
            with tracer.start_as_current_span("request"):
                futures.append(batcher.enqueue({"z": np.full((2, 3), sign, np.float32)}, 2, 5.0))
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results] == ["ndarray", "ndarray", "BatchFailed", "BatchFailed"]
    _, batches = by_kind(spans.get_finished_spans())
    assert [b.attributes["gan.batch.provider"] for b in batches if b.attributes] == [
        "CUDAExecutionProvider"
    ] * 2
    assert [b.status.is_ok for b in batches] == [True, False]
    assert "bad rows" in (batches[1].status.description or "")


def test_traceparent_in_gives_the_same_trace_id_in_the_span_and_the_response(
    ring_dir: Path, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> httpx.Response:
        async with asgi_client(create_app(Settings(model_dir=ring_dir))) as c:
            headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "X-Request-ID": "trace-me"}
            return await c.post(
                "/interpolate",
                json={
                    "model": "ring8",
                    "start": {"seed": 1},
                    "end": {"seed": 2},
                    "steps": 4,
                    "format": "json",
                },
                headers=headers,
            )

    response = asyncio.run(scenario())
    assert response.status_code == 200
    _, trace_id, returned_span, _ = response.headers["traceparent"].split("-")
    requests, _ = by_kind(spans.get_finished_spans())
    (request,) = requests.values()
    assert trace_id == CALLER_TRACE and request.context.trace_id == int(CALLER_TRACE, 16)
    assert request.parent is not None and request.parent.span_id == int(CALLER_SPAN, 16)
    assert request.context.span_id == int(returned_span, 16) != int(CALLER_SPAN, 16)
    assert request.attributes is not None and request.attributes["gan.request_id"] == "trace-me"
    assert request.attributes["gan.rows"] == 4 and request.name == "POST /interpolate"


def test_a_refusal_at_the_door_is_traced_too(ring_dir: Path, spans: InMemorySpanExporter) -> None:
    async def scenario() -> httpx.Response:
        async with asgi_client(create_app(Settings(model_dir=ring_dir, api_key="k" * 16))) as c:
            return await c.post("/generate", json=BODY)

    response = asyncio.run(scenario())
    requests, batches = by_kind(spans.get_finished_spans())
    (request,) = requests.values()
    assert response.status_code == 401 and span_id(response) == request.context.span_id and not batches
    assert request.attributes is not None and request.attributes["gan.outcome"] == "rejected"


def test_grpc_accepts_traceparent_metadata(ring_dir: Path, spans: InMemorySpanExporter) -> None:
    settings = Settings(model_dir=ring_dir, grpc_port=free_port())

    async def scenario() -> None:
        app = create_app(settings)
        async with asgi_client(app), triton_aio.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}") as c:
            headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            await c.infer("ring8", [], parameters={"n": 2}, headers=headers)

    asyncio.run(scenario())
    requests, batches = by_kind(spans.get_finished_spans())
    (call,) = (s for s in requests.values() if s.name == "grpc ModelInfer")
    assert call.context.trace_id == int(CALLER_TRACE, 16) and call.attributes is not None
    assert call.attributes["gan.rows"] == 2 and call.attributes["gan.format"] == "grpc"
    assert [link.context.span_id for b in batches for link in b.links] == [call.context.span_id]


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
    ],
)
def test_when_tracing_is_on(env: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert tracing.wanted_exporters(env) == exporters


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
    ],
)
def test_settings_it_cannot_honour_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(tracing.TracingError, match=named):
        tracing.wanted_exporters(env)


def test_tracing_off_puts_nothing_of_opentelemetry_on_the_path(ring_dir: Path) -> None:
    """A fresh process without OTEL_* variables: no SDK imported, no trace middleware, no `traceparent`, and the
    batcher holds no span for a queued request."""
    code = f"""
import asyncio, sys
from service.main import create_app
from service.settings import Settings
from tests.support import Hold, asgi_client

async def main():
    app = create_app(Settings(model_dir={str(ring_dir)!r}, runners=1, inline_rows=0))
    async with asgi_client(app) as c:
        batcher = app.state.gan.repository.get("ring8").batcher
        hold = Hold(batcher)
        first = asyncio.ensure_future(c.post("/generate", json={BODY!r}))
        await hold.until(entered=1, queued=0)
        queued = asyncio.ensure_future(c.post("/generate", json={BODY!r}))
        await hold.until(entered=1, queued=1)
        print("queued span:", batcher._queue[0].span)
        hold.gate.set()
        for response in await asyncio.gather(first, queued):
            print("status:", response.status_code, "traceparent:", response.headers.get("traceparent"))
    print("middleware:", [m.cls.__name__ for m in app.user_middleware])
    print("sdk:", sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "queued span: None",
        "status: 200 traceparent: None",
        "status: 200 traceparent: None",
        "middleware: ['RequestId', 'Gate']",
        "sdk: []",
    ]


def test_compose_sends_the_services_traces_to_its_trace_backend() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    backend = services["jaeger"]
    assert re.fullmatch(r"jaegertracing/all-in-one:\d+\.\d+\.\d+", backend["image"])  # a pinned tag
    assert backend["environment"]["COLLECTOR_OTLP_ENABLED"] == "true" and "16686:16686" in backend["ports"]
    for name in ("service", "service-gpu"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"  # OTLP/HTTP, the exporter we ship
        assert tracing.wanted_exporters(env) == ("otlp",)
        assert "jaeger" in services[name]["depends_on"]
