"""What happens around every gRPC call (service.protocols.grpc_v2), as the HTTP gate does it around a route.

Admission (the API keys, read from the call's metadata, and the drain refusal; health and liveness are open),
the in-flight count a drain waits for, the request metrics (endpoint `grpc <Method>`), and failures answered as
gRPC statuses: the HTTP code a failure stands for (service.protocols.v2_errors) mapped by `CODES`, its headers
(`retry-after`) in the trailing metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import Request

from service import tracing
from service.auth import KeyRing, presented_key
from service.gate import CONTROL_OFF, NOT_ADMIN, UNAUTHORIZED
from service.logs import rpc_request_id
from service.protocols.v2_errors import counted_problem, message
from service.routes import model_label
from service.state import AppState

log = logging.getLogger("service.grpc")

OPEN_METHODS = {"ServerLive", "ServerReady", "Check", "Watch"}  # no key needed, answered while draining
CONTROL_METHODS = {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}  # the admin key instead
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# A method: the request message and its context in, the response and the model it served ("" for none) out.
Handler = Callable[[Any, Any], Awaitable[tuple[Any, str]]]


class Refused(Exception):
    """An RPC answered with an error status: `status` is the HTTP code it stands for."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def rpc_request(context: Any) -> Request:
    """The RPC as the batcher's callers see a request: its end (done or cancelled) reads as a disconnect."""
    ended = asyncio.Event()
    context.add_done_callback(lambda _: ended.set())

    async def receive() -> dict[str, Any]:
        await ended.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/grpc", "headers": []}, receive)


class Calls:
    """Every call on the app's state admitted as the HTTP gate admits, counted, and its failures answered."""

    def __init__(self, state: AppState, keys: KeyRing | None, admin: KeyRing | None = None) -> None:
        self.state, self.keys, self.admin = state, keys, admin

    def admit(self, method: str, context: Any) -> None:
        if method in OPEN_METHODS:
            return
        metadata = [
            (key.encode("latin-1"), value.encode("latin-1"))
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        ]
        if method in CONTROL_METHODS:
            if self.admin is None or not self.admin.accepts(presented_key(metadata)):
                refused = CONTROL_OFF if self.admin is None else NOT_ADMIN
                self.state.metrics.rejections.labels("", refused.reason or "").inc()
                raise Refused(refused.status, refused.detail)
        elif self.keys is not None and not self.keys.accepts(presented_key(metadata)):
            self.state.metrics.rejections.labels("", "unauthorized").inc()
            raise Refused(401, UNAUTHORIZED.detail)
        if self.state.draining:
            self.state.metrics.rejections.labels("", "draining").inc()
            raise Refused(503, "the service is draining; retry on another replica", {"retry-after": "1"})

    def refusal(self, error: Exception, model: str) -> Refused:
        if isinstance(error, Refused):
            return error
        found = counted_problem(error, self.state, model)
        if found is None:
            log.exception("gRPC call failed", exc_info=error)
            return Refused(500, f"internal error: {type(error).__name__}")
        return Refused(found.status, message(found), {k.lower(): v for k, v in (found.headers or {}).items()})

    def unary(self, method: str, handler: Handler, request_type: Any) -> Any:
        """An RPC handler: admit, count in flight (so a drain waits for it), answer, record the request."""

        async def call(request: Any, context: Any) -> Any:
            started, status, model = time.perf_counter(), 200, ""
            counted = method not in OPEN_METHODS
            if counted:
                self.state.inflight += 1
                self.state.metrics.inflight.set(self.state.inflight)
            try:
                try:
                    self.admit(method, context)
                    metadata = context.invocation_metadata()  # x-request-id and traceparent, where sent
                    with (
                        self.state.repository.holding(),
                        rpc_request_id(metadata),
                        tracing.rpc_span(method, metadata),
                    ):
                        response, model = await handler(request, context)
                    return response
                except asyncio.CancelledError:
                    status = 499
                    raise
                except Exception as error:
                    named = getattr(request, "model_name", "") or getattr(request, "name", "")
                    model = model_label(self.state, named) if method not in ("Check", "Watch") else ""
                    refused = self.refusal(error, model)
                    status = refused.status
                    await context.abort(
                        CODES.get(refused.status, grpc.StatusCode.UNKNOWN),
                        refused.detail,
                        tuple(refused.headers.items()),
                    )
            finally:
                if counted:
                    self.state.inflight -= 1
                    self.state.metrics.inflight.set(self.state.inflight)
                endpoint = f"grpc {method}"
                self.state.metrics.requests.labels(endpoint, model, str(status)).inc()
                self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=request_type.FromString, response_serializer=serialize
        )


def serialize(reply: Any) -> bytes:
    data: bytes = reply.SerializeToString()
    return data
