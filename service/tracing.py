"""OpenTelemetry tracing: off unless the standard OTEL_* variables ask for it, and free while off.

On: a server span per HTTP request (`TraceRequests`: child of the caller's W3C `traceparent`, its own context
returned in a `traceparent` response header), given the model, version, rows, format and outcome; a span per
batch (rows, requests, provider, queue wait, run time), linked both ways to the request spans computed in it
(a batch serves many traces, so it is a root span of its own, as batch receivers are in OpenTelemetry's
messaging conventions); a span per gRPC call, from the call's `traceparent` metadata.

When it is on (`wanted_exporters`): never with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none; with the
exporters OTEL_TRACES_EXPORTER names (otlp, console); otherwise exactly when an OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). The SDK reads the rest of its standard
variables itself (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS, ...).

Off: the SDK is never imported, no middleware is added, and the batcher and the routes test one module variable
(`_tracer is None`) before anything of OpenTelemetry is touched. FastAPI's own telemetry is off either way.

The provider is process-wide, as in OpenTelemetry's own design (the batchers are built deep in the model
repository), but it is this module's rather than OpenTelemetry's global one, so tests can swap it (`use`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "gan-serving"  # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) overrides it
EXPORTERS = ("otlp", "console")
PROPAGATED = {b"traceparent", b"tracestate", b"baggage"}  # the request headers OTEL_PROPAGATORS may read

_provider: TracerProvider | None = None
_tracer: Tracer | None = None  # None: tracing is off
_configured = False


class TracingError(ValueError):
    """OTEL_* variables this service cannot honour (it stops at start-up with the reason)."""


def wanted_exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OTEL_* variables ask for; none: tracing is off (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = tuple(e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip())
    if named == ("none",):
        return ()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ("otlp",) if endpoint else ()
    unknown = sorted(set(named) - set(EXPORTERS))
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER: {unknown} not supported; use {list(EXPORTERS)} or none")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in named and protocol not in (None, "", "http/protobuf"):
        raise TracingError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf (port 4318) is built in"
        )
    return named


def provider_from_environment() -> TracerProvider | None:
    """A tracer provider exporting in batches to what the OTEL_* variables name; None when tracing is off."""
    exporters = wanted_exporters(os.environ)
    if not exporters:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": SERVICE_NAME}))
    for name in exporters:
        exporter: SpanExporter = OTLPSpanExporter() if name == "otlp" else ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def use(provider: TracerProvider | None) -> None:
    """Trace with this provider from now on (None: tracing off). `configure` calls it; so do tests."""
    global _provider, _tracer, _configured
    _provider, _configured = provider, True
    _tracer = provider.get_tracer("service") if provider is not None else None


def configure() -> TracerProvider | None:
    """The provider, built from the environment the first time; None when tracing is off."""
    if not _configured:
        use(provider_from_environment())
    return _provider


def enabled() -> bool:
    return _tracer is not None


def flush() -> None:
    """Export what is still buffered (at shutdown)."""
    if _provider is not None:
        _provider.force_flush()


# FastAPI's own telemetry stays off even where a global OpenTelemetry provider is set (by an auto-instrumenting
# launcher, say): the service makes its own server span, at a third of the cost per request (bench/tracing.py).
FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "auto_configure": False,
}


# --- the request span ------------------------------------------------------------------------------------


def request_span() -> Span | None:
    """The current request's span where tracing is on and the request is sampled (the batcher keeps it)."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the active span, sampled or not, ended or not; None with none or off."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None


def annotate(model: str, version: int, rows: int, fmt: str) -> None:
    """What the route knows about its request, on the request's span (a no-op while tracing is off)."""
    span = request_span()
    if span is not None:
        span.set_attributes({"gan.model": model, "gan.version": version, "gan.rows": rows, "gan.format": fmt})


def traceparent(span: Span) -> str:
    """The W3C `traceparent` of a span (sampled or not: the caller learns its trace id either way)."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def outcome(status: int) -> str:
    return "ok" if status < 400 else "rejected" if status < 500 else "failed"


class TraceRequests:
    """The server span of every HTTP request: child of the caller's `traceparent`, current while the request
    runs (so the batcher and the log lines find it), named by its endpoint, with the request id and the outcome,
    and its context returned in the response's `traceparent` header."""

    def __init__(
        self, app: ASGIApp, label: Callable[[str], str], request_id: Callable[[], str | None]
    ) -> None:
        self.app, self.label, self.request_id = app, label, request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in PROPAGATED}
        method, route = scope["method"], self.label(scope["path"])
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]}
        attributes |= {"http.route": route} if route != "other" else {}
        span = _tracer.start_span(
            f"{method} {route}",
            context=propagate.extract(carrier) if carrier else Context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        header = (b"traceparent", traceparent(span).encode("ascii"))

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attributes({"http.response.status_code": status, "gan.outcome": outcome(status)})
                span.set_attribute("gan.request_id", self.request_id() or "")  # set inside, by logs.RequestId
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_with_context)
        except BaseException as error:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
            raise
        finally:
            span.end()
            otel_context.detach(token)


@contextmanager
def rpc_span(method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Iterator[None]:
    """A server span around one gRPC call, child of the caller's `traceparent` metadata when it sent one."""
    if _tracer is None:
        yield
        return
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    attributes = {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": method}
    with _tracer.start_as_current_span(
        f"grpc {method}", context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    ):
        yield


# --- the batch span --------------------------------------------------------------------------------------


def start_batch(
    name: str, spans: list[Span], requests: int, rows: int, provider: str, queue_wait_s: float
) -> Span | None:
    """A span for one batch, linked to the request spans in it (and they to it); None while tracing is off."""
    if _tracer is None or not spans:
        return None
    batch = _tracer.start_span(
        f"batch {name}",
        context=Context(),  # a root: the batch belongs to as many traces as it has requests
        links=[Link(span.get_span_context()) for span in spans],
        attributes={
            "gan.batch.rows": rows,
            "gan.batch.requests": requests,
            "gan.batch.queue_wait_ms": round(queue_wait_s * 1000, 3),
        }
        | ({"gan.batch.provider": provider} if provider else {}),  # "": the batcher was not told
    )
    context = batch.get_span_context()
    for span in spans:
        span.add_link(context, {"gan.link": "computed in batch"})
    return batch


def end_batch(batch: Span | None, run_s: float, error: Exception | None = None) -> None:
    if batch is None:
        return
    batch.set_attribute("gan.batch.run_ms", round(run_s * 1000, 3))
    if error is not None:
        batch.record_exception(error)
        batch.set_status(StatusCode.ERROR, str(error))
    batch.end()
