"""The FastAPI app: `create_app(settings)` builds it; models load in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import tracing
from service.auth import admin_ring, key_ring
from service.datasets.routes import router as datasets_router
from service.datasets.runner import DatasetJobs
from service.edit_route import router as edit_router
from service.errors import install_error_handlers
from service.fastpath import FastGenerate
from service.gate import PROBES, Gate, endpoint_label
from service.logs import RequestId, current_request_id
from service.metrics import Metrics
from service.playground import install_playground
from service.protocols.v2 import router as v2_router
from service.protocols.v2_repository import router as v2_repository_router
from service.protocols.v2_tensors import InferenceRequest
from service.repository import Repository
from service.routes import router
from service.runtime import check_single_runtime
from service.schemas import EditRequest
from service.settings import Settings
from service.state import AppState

log = logging.getLogger("service")


def openapi_with_bodies(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the bodies of routes that read their own (/edit: JSON or multipart; v2 infer:
    JSON, or JSON and binary tensors)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EditRequest, InferenceRequest):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = key_ring(settings)  # a bad keys file stops the start here, with the reason
    admin = admin_ring(settings, keys)
    metrics = Metrics()
    state = AppState(settings, metrics, Repository(settings, metrics))
    datasets = DatasetJobs(state)
    tracer_provider = tracing.configure()  # None: tracing off (no OTEL_* variables ask for it)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = check_single_runtime()
        log.info("ONNX Runtime package: %s; model directory: %s", runtime, settings.model_dir)
        state.repository.load()
        await datasets.start()  # resumes unfinished dataset jobs
        poll = None
        if settings.model_poll_s > 0:
            poll = asyncio.get_running_loop().create_task(state.control.poll_forever(settings.model_poll_s))
        grpc_server = None
        if settings.grpc_port is not None:  # imported only here: grpcio is needed only with gRPC on
            try:
                from service.protocols.grpc_v2 import start_server
            except ImportError as error:
                raise RuntimeError(
                    f"GAN_GRPC_PORT is set but {error.name} is not installed: install the `grpc` extra"
                ) from None
            grpc_server = await start_server(state, keys, app.version, admin)
        try:
            yield
        finally:
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if grpc_server is not None:
                await grpc_server.stop(1.0)
            await datasets.close()  # before the batchers close: a job stops, and resumes at the next start
            await state.control.close()
            await state.repository.close()
            tracing.flush()

    app = FastAPI(
        title="GAN generator service",
        version="0.1.0",
        description="Samples, interpolations and labelled synthetic data from GAN generators served by ONNX Runtime.",
        lifespan=lifespan,
        docs_url=None,  # /docs comes from service.playground, with vendored assets; no /redoc
        redoc_url=None,
        telemetry=tracing.FASTAPI_TELEMETRY,  # off: the server spans are service.tracing's
    )
    app.state.gan = state
    app.state.datasets = datasets
    app.include_router(router)
    app.include_router(edit_router)
    app.include_router(v2_router)
    app.include_router(v2_repository_router)
    app.include_router(datasets_router)
    install_playground(app)  # `/`, `/docs` and `/static/`: out of the schema
    app.openapi = lambda: openapi_with_bodies(app)  # type: ignore[method-assign]
    install_error_handlers(app, state)
    fast = FastGenerate(app, state) if settings.fast_path else None
    app.add_middleware(Gate, state=state, keys=keys, fast=fast, admin=admin)
    # The last added runs first: the request's span, then its id (so its lines carry both), then the gate.
    app.add_middleware(RequestId, access_log=settings.access_log)
    if tracer_provider is not None:
        app.add_middleware(tracing.TraceRequests, label=endpoint_label, request_id=current_request_id)
    if keys is not None:
        log.info("API keys required (%d accepted) on all but %s and the page", len(keys), sorted(PROBES))
    log.info("model control (/v2/repository): %s", "on, with GAN_ADMIN_KEY" if admin else "off")
    return app
