"""Open Inference Protocol (KServe v2) over HTTP, on the service's own port, batchers and limits: the routes.

Health, server and model metadata (service.protocols.v2_metadata), model readiness, and inference. An inference
request either carries the generator's inputs as tensors (`z` [N, z_dim] FP32, and `c` [N, num_classes] FP32 for
conditional models), or no inputs and the native API's sample parameters (`seed`, `offset`, `n`, `labels`,
`truncation`): service.protocols.v2_plans plans both, the latter with `service.plans.generate_plan`, so they give
the very samples `/generate` gives.

The output `x` is FP32 in the graph's layout ([N, C, H, W] images, [N, D] vectors); an image model's `x` comes
as UINT8 [N, H, W, C] (the bytes of `/generate`'s npy) when the output or the request has the parameter
`datatype: "UINT8"`. Tensors travel as JSON or as Triton's binary tensor data (service.protocols.v2_tensors).
Errors are `{"error": "..."}` (service.protocols.v2_errors): 400 for a request the model cannot take, 404 for an
unknown model or version, and otherwise the native API's codes (401, 413, 429, 503, 504).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import tracing
from service.inference import run_model
from service.offload import offload
from service.protocols import v2_metadata, v2_tensors
from service.protocols.v2_errors import v2_error, v2_errors, v2_problem_response
from service.protocols.v2_metadata import (
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
    model_metadata,
    not_ready,
    ready_versions,
    resolve,
)
from service.protocols.v2_plans import Planned, plan_inference, response_parameters, served_x
from service.protocols.v2_tensors import HEADER_LENGTH, Output
from service.responses import provenance_headers
from service.routes import StateDep, model_label
from service.state import AppState

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"], responses=v2_errors(401, 503))


def encode(x: np.ndarray, head: dict[str, Any], planned: Planned) -> tuple[bytes, int | None]:
    output = Output("x", served_x(x, planned.datatype), planned.datatype, planned.binary)
    return v2_tensors.encode_response(head, [output])


async def infer_response(name: str, version: str | None, request: Request, state: AppState) -> Response:
    try:
        model = resolve(state, name, version)
        body = v2_tensors.inflate(
            await request.body(), request.headers.get("content-encoding"), state.settings.max_body_bytes
        )
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > 1 << 16:  # parsing a large JSON body would hold up the event loop
            parsed = await run_in_threadpool(v2_tensors.read_request, body, header_length)
        else:
            parsed = v2_tensors.read_request(body, header_length)
        planned = await plan_inference(parsed, model, state.settings)
        plan = planned.plan
        tracing.annotate(model.name, model.version, plan.rows, "v2-binary" if planned.binary else "v2-json")
        x = await run_model(model, plan.feeds, plan.rows, request, state)
        head: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
        head |= ({"id": parsed.header.id} if parsed.header.id is not None else {}) | {
            "parameters": response_parameters(model, plan, planned.truncation)
        }
        content, json_length = await offload(plan.rows, encode, x, head, planned)
        headers = provenance_headers(model, plan)
        if json_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(json_length)
        return Response(content, media_type="application/octet-stream", headers=headers)
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, name))


# --- routes ----------------------------------------------------------------------------------------------


@router.get("/health/live", response_model=LiveResponse)
async def server_live() -> dict[str, bool]:
    """Liveness: the process answers (no key needed, answered while draining)."""
    return {"live": True}


@router.get("/health/ready", response_model=ReadyResponse)
async def server_ready(state: StateDep) -> JSONResponse:
    """Readiness, as /readyz: models loaded (on CUDA when GAN_DEVICE=cuda) and not draining."""
    reason = not_ready(state)
    return JSONResponse({"ready": True}) if reason is None else v2_error(503, reason)


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    return v2_metadata.server_metadata(request.app.version)


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=v2_errors(404))
async def model_metadata_default(model_name: str, state: StateDep) -> Any:
    """The default (highest ready) version's inputs and outputs, and every ready version."""
    try:
        return model_metadata(resolve(state, model_name, None), ready_versions(state, model_name))
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, model_name))


@router.get(
    "/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=v2_errors(404)
)
async def model_metadata_version(model_name: str, model_version: str, state: StateDep) -> Any:
    try:
        model = resolve(state, model_name, model_version)
        return model_metadata(model, [str(model.version)])
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, model_name))


async def model_ready(name: str, version: str | None, state: AppState) -> JSONResponse:
    try:
        model = resolve(state, name, version)
        return JSONResponse({"name": model.name, "ready": True})
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, name))


@router.get("/models/{model_name}/ready", response_model=ModelReadyResponse, responses=v2_errors(404))
async def model_ready_default(model_name: str, state: StateDep) -> JSONResponse:
    """200 when the model's default version serves; 503 when no version of it loaded."""
    return await model_ready(model_name, None, state)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReadyResponse,
    responses=v2_errors(404),
)
async def model_ready_version(model_name: str, model_version: str, state: StateDep) -> JSONResponse:
    return await model_ready(model_name, model_version, state)


INFER_BODY: dict[str, Any] = {
    "required": True,
    "description": "JSON, or JSON followed by binary tensors: then the header Inference-Header-Content-Length "
    "gives the JSON's length, and each binary input's parameters its binary_data_size",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
INFER_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "x as JSON, or JSON then x's bytes (binary_data): Inference-Header-Content-Length gives "
        "the JSON's length; X-* provenance headers as on /generate",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
INFER_RESPONSES = INFER_200 | v2_errors(400, 404, 413, 429, 504)


@router.post(
    "/models/{model_name}/infer",
    response_model=v2_tensors.InferenceResponse,
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_BODY},
)
async def infer_default(model_name: str, request: Request, state: StateDep) -> Response:
    """Inference on the default version: tensors z (and c), or the sample parameters of /generate."""
    return await infer_response(model_name, None, request, state)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=v2_tensors.InferenceResponse,
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_BODY},
)
async def infer_version(model_name: str, model_version: str, request: Request, state: StateDep) -> Response:
    return await infer_response(model_name, model_version, request, state)
