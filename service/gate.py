"""The door in front of every route, as named steps: admit (keys, drain), read the bounded body, dispatch, record.

A pure ASGI middleware: it buffers the body once so the route's later `receive()` reports only a disconnect,
and it labels the request metrics from the answer itself (its status, and `X-Model` where a model answered).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, presented_key
from service.errors import RETRY_NOW, Problem, error_response, v2_path
from service.fastpath import FastGenerate
from service.playground import public
from service.state import AppState

V2_PROBES = {"/v2/health/live", "/v2/health/ready"}
ALWAYS_OPEN = {"/healthz", "/readyz", "/metrics", *V2_PROBES}  # answered even while draining
PROBES = {"/healthz", "/readyz", *V2_PROBES}  # never need a key: kubelets and load balancers carry none
ENDPOINTS = {
    "/v2",
    "/v2/repository/index",
    *V2_PROBES,
    "/generate",
    "/interpolate",
    "/augment",
    "/edit",
    "/datasets",
    "/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
}
BODY_METHODS = ("POST", "PUT", "PATCH")
UNAUTHORIZED = Problem(
    401,
    "missing or unknown API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "authorization",
    {"WWW-Authenticate": 'Bearer realm="gan-serving"'},
    "unauthorized",
)
DRAINING = Problem(503, "the service is draining; retry on another replica", None, RETRY_NOW, "draining")
CONTROL = "/v2/repository"  # model control: its own key (GAN_ADMIN_KEY), off without one
CONTROL_OFF = Problem(
    403,
    "model control is disabled: set GAN_ADMIN_KEY to enable /v2/repository",
    None,
    None,
    "control_disabled",
)
NOT_ADMIN = Problem(
    401,
    "missing or wrong admin key: model control needs GAN_ADMIN_KEY as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "authorization",
    {"WWW-Authenticate": 'Bearer realm="gan-serving-control"'},
    "unauthorized",
)


# Triton's repository extension: /v2/repository/index, /v2/repository/models/{name}/load|unload
V2_CONTROL_PATH = re.compile(r"/v2/repository/models/[^/]+/(load|unload)")
# Dataset jobs: /datasets/{id}, /datasets/{id}/metadata, /datasets/{id}/shards/{k}
DATASET_PATH = re.compile(r"/datasets/[^/]+(/metadata|/shards/[^/]+)?")
# The Open Inference Protocol's model paths, by their shape: /v2/models/{name}[/versions/{version}][/ready|/infer]
V2_MODEL_PATH = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?(/ready|/infer)?")


def endpoint_label(path: str) -> str:
    """A bounded set of label values: unknown paths must not create new time series."""
    if path in ENDPOINTS:
        return path
    control = V2_CONTROL_PATH.fullmatch(path)
    if control is not None:
        return "/v2/repository/models/{name}/" + control[1]
    v2 = V2_MODEL_PATH.fullmatch(path)
    if v2 is not None:
        return "/v2/models/{name}" + ("/versions/{version}" if v2[1] else "") + (v2[2] or "")
    dataset = DATASET_PATH.fullmatch(path)
    if dataset is not None:
        suffix = dataset[1] or ""
        return "/datasets/{id}" + ("/shards/{k}" if suffix.startswith("/shards/") else suffix)
    return "/models/{name}" if path.startswith("/models/") else "other"


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes (GAN_MAX_BODY_BYTES)")


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, at most `limit` bytes (BodyTooLarge past that); None if the client went away."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body over once, then passes on the client's messages."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Answer:
    """Wraps `send` to note the status and the answering model (`X-Model`) of the response."""

    def __init__(self, send: Send) -> None:
        self.send, self.status, self.model = send, 500, ""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"x-model":
                    self.model = value.decode("latin-1")
        await self.send(message)


class Gate:
    """API keys (the admin key for model control), drain refusal, body-size limit, the /generate fast path,
    request metrics, and the versions a request holds until it is answered."""

    def __init__(
        self,
        app: ASGIApp,
        state: AppState,
        keys: KeyRing | None,
        fast: FastGenerate | None = None,
        admin: KeyRing | None = None,
    ) -> None:
        self.app, self.state, self.keys, self.fast, self.admin = app, state, keys, fast, admin
        self.open_paths = PROBES | ({"/metrics"} if state.settings.metrics_public else set())

    def refusal(self, scope: Scope) -> Problem | None:
        """Why the request may not come in at all: no valid key, or the service is draining."""
        path = scope["path"]
        if path.startswith(CONTROL) and scope["method"] == "POST":  # the admin key, not the user keys
            if self.admin is None:
                return CONTROL_OFF
            if not self.admin.accepts(presented_key(scope["headers"])):
                return NOT_ADMIN
            return DRAINING if self.state.draining else None
        open_path = path in self.open_paths or public(scope["method"], path)  # the page: its calls carry keys
        keys = self.keys if not open_path else None
        if keys is not None and not keys.accepts(presented_key(scope["headers"])):
            return UNAUTHORIZED
        if self.state.draining and path not in ALWAYS_OPEN:
            return DRAINING
        return None

    @contextmanager
    def counted(self, path: str) -> Iterator[None]:
        """In flight while inside; probes neither hold up a drain nor count as load."""
        counted = path not in ALWAYS_OPEN
        if counted:
            self.state.inflight += 1
            self.state.metrics.inflight.set(self.state.inflight)
        try:
            yield
        finally:
            if counted:
                self.state.inflight -= 1
                self.state.metrics.inflight.set(self.state.inflight)

    async def refuse(self, problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
        if problem.reason is not None:
            self.state.metrics.rejections.labels("", problem.reason).inc()
        if v2_path(scope["path"]):
            response = JSONResponse({"error": problem.detail}, problem.status, problem.headers)
        else:
            response = error_response(problem.status, problem.detail, problem.field, problem.headers)
        await response(scope, receive, send)

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, or read the body and hand the request to the fast path or the app."""
        problem = self.refusal(scope)
        if problem is not None:
            await self.refuse(problem, scope, receive, send)
            return
        body = b""
        if scope["method"] in BODY_METHODS:
            try:
                read = await read_body(receive, self.state.settings.max_body_bytes)
            except BodyTooLarge as error:
                await self.refuse(
                    Problem(413, str(error), "body", reason="body_too_large"), scope, receive, send
                )
                return
            if read is None:
                return  # the client went away before it finished sending
            body = read
        if self.fast is not None and self.fast.takes(scope):
            await self.fast(scope, body, replaying(body, receive), send)
        else:
            await self.app(scope, replaying(body, receive), send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, answer = time.perf_counter(), Answer(send)
        try:
            with self.counted(scope["path"]), self.state.repository.holding():
                await self.admit(scope, receive, answer)
        finally:
            endpoint = endpoint_label(scope["path"])
            self.state.metrics.requests.labels(endpoint, answer.model, str(answer.status)).inc()
            self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
