"""The FastAPI app: `create_app(settings)` builds it; models load in the lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, key_ring, presented_key
from service.errors import error_response, install_error_handlers
from service.fastpath import FastGenerate, takes
from service.metrics import Metrics
from service.repository import Repository
from service.routes import router
from service.runtime import check_single_runtime
from service.settings import Settings
from service.state import AppState

log = logging.getLogger("service")
ALWAYS_OPEN = {"/healthz", "/readyz", "/metrics"}  # answered even while draining
PROBES = {"/healthz", "/readyz"}  # never need a key: kubelets and load balancers carry none
ENDPOINTS = {
    "/generate",
    "/interpolate",
    "/augment",
    "/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
}


def endpoint_label(path: str) -> str:
    """A bounded set of label values: unknown paths must not create new time series."""
    if path in ENDPOINTS:
        return path
    return "/models/{name}" if path.startswith("/models/") else "other"


class Gate:
    """Pure ASGI middleware in front of every route: API keys, drain refusal, body-size limit, metrics."""

    def __init__(
        self, app: ASGIApp, state: AppState, keys: KeyRing | None, fast: FastGenerate | None = None
    ) -> None:
        self.app, self.state, self.keys, self.fast = app, state, keys, fast
        self.open_paths = PROBES | ({"/metrics"} if state.settings.metrics_public else set())

    async def _reply(
        self, scope: Scope, receive: Receive, send: Send, status: int, detail: str, field: str | None = None
    ) -> None:
        headers = {"Retry-After": "1"} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="gan-serving"'}
        await error_response(status, detail, field, headers)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, started, endpoint = self.state, time.perf_counter(), endpoint_label(scope["path"])
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = scope["path"] not in ALWAYS_OPEN  # probes neither hold up a drain nor count as load
        if counted:
            state.inflight += 1
            state.metrics.inflight.set(state.inflight)
        try:
            if (
                self.keys is not None
                and scope["path"] not in self.open_paths
                and not self.keys.accepts(presented_key(scope["headers"]))
            ):
                state.metrics.rejections.labels("", "unauthorized").inc()
                detail = (
                    "missing or unknown API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                )
                await self._reply(scope, receive, send_status, 401, detail, "authorization")
                return
            if state.draining and scope["path"] not in ALWAYS_OPEN:
                state.metrics.rejections.labels("", "draining").inc()
                await self._reply(
                    scope, receive, send_status, 503, "the service is draining; retry on another replica"
                )
                return
            limit = state.settings.max_body_bytes
            body, more = bytearray(), scope["method"] in ("POST", "PUT", "PATCH")
            while more:  # buffer the (bounded) body so the route's receive() later reports only a disconnect
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    state.metrics.rejections.labels("", "body_too_large").inc()
                    detail = f"request body exceeds {limit} bytes (GAN_MAX_BODY_BYTES)"
                    await self._reply(scope, receive, send_status, 413, detail, "body")
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            if self.fast is not None and takes(scope):
                await self.fast(scope, bytes(body), replay, send_status)
            else:
                await self.app(scope, replay, send_status)
        finally:
            if counted:
                state.inflight -= 1
                state.metrics.inflight.set(state.inflight)
            model = str(scope.get("state", {}).get("model", ""))
            state.metrics.requests.labels(endpoint, model, str(status)).inc()
            state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = key_ring(settings)  # a bad keys file stops the start here, with the reason
    metrics = Metrics()
    state = AppState(settings, metrics, Repository(settings, metrics))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = check_single_runtime()
        log.info("ONNX Runtime package: %s; model directory: %s", runtime, settings.model_dir)
        state.repository.load()
        try:
            yield
        finally:
            await state.repository.close()

    app = FastAPI(
        title="GAN generator service",
        version="0.1.0",
        description="Samples, interpolations and labelled synthetic data from GAN generators served by ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.gan = state
    app.include_router(router)
    install_error_handlers(app)
    fast = FastGenerate(app, state) if settings.fast_path else None
    app.add_middleware(Gate, state=state, keys=keys, fast=fast)
    if keys is not None:
        log.info("API keys required (%d accepted) on all but %s", len(keys), sorted(PROBES))
    return app
