"""Open Inference Protocol (KServe v2) over HTTP, on the service's own port, batchers and limits.

Health, server and model metadata, model readiness, and inference. An inference request either carries the
generator's inputs as tensors (`z` [N, z_dim] FP32, and `c` [N, num_classes] FP32 for conditional models), or
no inputs and the native API's sample parameters (`seed`, `offset`, `n`, `labels`, `truncation`): those are
planned by `service.plans.generate_plan`, so they give the very samples `/generate` gives.

The output `x` is FP32 in the graph's layout ([N, C, H, W] images, [N, D] vectors); an image model's `x` comes
as UINT8 [N, H, W, C] (the bytes of `/generate`'s npy) when the output or the request has the parameter
`datatype: "UINT8"`. Tensors travel as JSON or as Triton's binary tensor data (service.protocols.v2_tensors).
Errors are `{"error": "..."}`: 400 for a request the model cannot take, 404 for an unknown model or version,
and otherwise the native API's codes (401, 413, 429, 503, 504).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service import encoding, plans
from service.errors import Problem, problem_of
from service.inference import run_model
from service.manifest import Manifest
from service.offload import offload
from service.protocols import v2_tensors
from service.protocols.v2_tensors import HEADER_LENGTH, InferenceRequest, Output, Parameter, TensorError
from service.repository import ModelNotFound, ReadyModel
from service.responses import provenance_headers
from service.routes import StateDep, model_label
from service.schemas import GenerateRequest
from service.settings import Settings
from service.state import AppState

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "parameters"]
SAMPLE_PARAMETERS = ("seed", "offset", "n", "labels", "truncation")  # the native API's, for /generate's plan
OUTPUT_PARAMETERS = ("binary_data_output", "datatype")
MAX_ABS_INPUT = 1e4  # as /interpolate's explicit z
# Bytes one output value costs: raw FP32 or UINT8, or JSON text (as service.plans counts JSON numbers).
VALUE_BYTES = {("FP32", True): 4, ("UINT8", True): 1, ("FP32", False): 24, ("UINT8", False): 4}


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


def v2_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "a request the model cannot take: the message names the field and the limit",
        401: "missing or unknown API key (when keys are configured)",
        404: "no such model or version",
        413: "request body over GAN_MAX_BODY_BYTES (inflated, when compressed)",
        429: "queue full: retry after the Retry-After header's seconds",
        503: "draining, not ready, or the model failed to load",
        504: "not computed within GAN_REQUEST_TIMEOUT_S",
    }
    return {code: {"model": V2Error, "description": what[code]} for code in codes}


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"], responses=v2_errors(401, 503))


def v2_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def problem(error: Exception, state: AppState) -> Problem | None:
    if isinstance(error, TensorError):
        too_large = isinstance(error, v2_tensors.TooLarge)
        return Problem(
            413 if too_large else 400,
            error.detail,
            error.field,
            None,
            "body_too_large" if too_large else "invalid",
        )
    return problem_of(error, state)


def v2_problem_response(error: Exception, state: AppState, model: str = "") -> JSONResponse:
    """The protocol's answer to `error`: `{"error": "field: detail"}`, 400 where the native API says 422.

    Counted as the native routes count rejections; unknown errors are raised again (a 500)."""
    found = problem(error, state)
    if found is None:
        raise error
    if found.reason is not None:
        state.metrics.rejections.labels(model, found.reason).inc()
    headers = (found.headers or {}) | ({"X-Model": model} if model else {})
    detail = f"{found.field}: {found.detail}" if found.field else found.detail
    return v2_error(400 if found.status == 422 else found.status, detail, headers or None)


def resolve(state: AppState, name: str, version: str | None) -> ReadyModel:
    """The model, at the version the path names (a decimal number) or its default one."""
    if version is None or name not in state.repository.models:
        return state.repository.get(name)
    if not re.fullmatch(r"[1-9][0-9]{0,8}", version):
        raise ModelNotFound(
            f"model '{name}' has no version '{version}'; versions: {sorted(state.repository.models[name])}"
        )
    return state.repository.get(name, int(version))


def model_metadata(model: ReadyModel, versions: list[str]) -> dict[str, Any]:
    manifest = model.manifest
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, manifest.z_dim]}]
    if manifest.num_classes:
        inputs.append({"name": "c", "datatype": "FP32", "shape": [-1, manifest.num_classes]})
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *manifest.output_shape]}],
    }


def ready_versions(state: AppState, name: str) -> list[str]:
    versions = state.repository.models.get(name, {})
    return [str(v) for v, model in sorted(versions.items()) if isinstance(model, ReadyModel)]


# --- what an inference request asks for ----------------------------------------------------------------


def output_choice(header: InferenceRequest, manifest: Manifest) -> tuple[str, bool]:
    """(datatype of x, whether it goes as binary): request parameters, overridden by the output's own."""
    params = header.parameters or {}
    datatype, binary = params.get("datatype", "FP32"), params.get("binary_data_output", False)
    field = "parameters"
    seen: set[str] = set()
    for i, out in enumerate(header.outputs or []):
        field = f"outputs[{i}]"
        if out.name != "x":
            raise TensorError(f"model {manifest.name} has one output, 'x'; got '{out.name}'", f"{field}.name")
        if out.name in seen:
            raise TensorError("output 'x' is asked for twice", f"{field}.name")
        seen.add(out.name)
        own = out.parameters or {}
        unknown = sorted(set(own) - {"binary_data", "datatype"})
        if unknown:
            raise TensorError(
                f"unknown output parameters {unknown}: binary_data, datatype", f"{field}.parameters"
            )
        datatype, binary = own.get("datatype", datatype), own.get("binary_data", binary)
    if not isinstance(binary, bool):
        raise TensorError("binary_data and binary_data_output must be true or false", field)
    if datatype not in ("FP32", "UINT8"):
        raise TensorError(f"datatype of x must be FP32 or UINT8, got {datatype!r}", f"{field}.datatype")
    if datatype == "UINT8" and manifest.kind != "image":
        raise TensorError(f"model {manifest.name} outputs vectors: x is FP32 only", f"{field}.datatype")
    return str(datatype), binary


def check_parameters(header: InferenceRequest) -> dict[str, Parameter]:
    """The request's sample parameters, after refusing unknown ones and mixing them with input tensors."""
    params = header.parameters or {}
    unknown = sorted(set(params) - set(SAMPLE_PARAMETERS) - set(OUTPUT_PARAMETERS))
    if unknown:
        known = [*SAMPLE_PARAMETERS, *OUTPUT_PARAMETERS]
        raise TensorError(f"unknown parameters {unknown}; this server reads {known}", "parameters")
    sample = {k: v for k, v in params.items() if k in SAMPLE_PARAMETERS}
    if sample and header.inputs:
        raise TensorError(
            f"parameters {sorted(sample)} choose the samples: give them with no inputs, or give z (and c) only",
            "parameters",
        )
    return sample


def generate_request(name: str, version: int, sample: dict[str, Parameter]) -> GenerateRequest:
    """The native request the parameters stand for: labels may list classes as "3,1,Dress"."""
    fields: dict[str, Any] = dict(sample)
    labels = fields.get("labels")
    if isinstance(labels, str) and "," in labels:
        fields["labels"] = [part.strip() for part in labels.split(",")]
    try:
        return GenerateRequest.model_validate({"model": name, "version": version, "format": "npy", **fields})
    except ValidationError as error:
        item = error.errors()[0]
        loc = ".".join(str(p) for p in item["loc"][:1])
        raise TensorError(item["msg"], f"parameters.{loc}") from None


def tensor_plan(request: v2_tensors.Request, manifest: Manifest, settings: Settings) -> plans.Plan:
    """Feeds from explicit tensors: z [N, z_dim] FP32, and c [N, num_classes] FP32 for conditional models."""
    widths = {"z": manifest.z_dim} | ({"c": manifest.num_classes} if manifest.num_classes else {})
    names = [spec.name for spec in request.header.inputs]
    unknown, missing = sorted(set(names) - set(widths)), [n for n in widths if n not in names]
    if unknown or missing:
        raise TensorError(
            f"model {manifest.name} takes inputs {list(widths)}; "
            + (f"unknown: {unknown}" if unknown else f"missing: {missing}"),
            "inputs",
        )
    feeds, rows = {}, None
    for i, spec in enumerate(request.header.inputs):
        field, width = f"inputs[{i}]", widths[spec.name]
        if spec.datatype != "FP32":
            raise TensorError(f"input {spec.name} must be FP32, got {spec.datatype}", f"{field}.datatype")
        array = request.arrays[spec.name]
        if array.ndim != 2 or array.shape[1] != width:
            raise TensorError(
                f"input {spec.name} must have shape [-1, {width}], got {spec.shape}", f"{field}.shape"
            )
        if rows is not None and array.shape[0] != rows:
            raise TensorError(
                f"inputs have {rows} and {array.shape[0]} rows: they must agree", f"{field}.shape"
            )
        rows = array.shape[0]
        if not np.isfinite(array).all() or (array.size and np.abs(array).max() > MAX_ABS_INPUT):
            raise TensorError(f"{spec.name} must be finite numbers with |value| <= 10000", f"{field}.data")
        feeds[spec.name] = np.array(array, dtype=np.float32)  # a copy: binary inputs view the request body
    assert rows is not None  # z is always among the inputs
    if rows == 0:
        raise TensorError("inputs need at least 1 row", "inputs[0].shape")
    if rows > settings.max_n:
        raise TensorError(f"inputs have {rows} rows; at most {settings.max_n} (GAN_MAX_N)", "inputs[0].shape")
    return plans.Plan(feeds, None, list(range(rows)))


def check_output_size(
    rows: int, manifest: Manifest, datatype: str, binary: bool, settings: Settings, field: str
) -> None:
    size = rows * int(np.prod(manifest.output_shape)) * VALUE_BYTES[datatype, binary]
    if size > settings.max_response_bytes:
        raise plans.PlanError(
            f"{rows} rows of {manifest.name} as {datatype} {'binary' if binary else 'JSON'} would be about "
            f"{size} bytes; at most {settings.max_response_bytes} (GAN_MAX_RESPONSE_BYTES): ask for fewer rows "
            "or binary data",
            field,
        )


def response_parameters(
    model: ReadyModel, plan: plans.Plan, truncation: float | None
) -> dict[str, Parameter]:
    """Provenance (as the native X-* headers carry it), and the seed, offset, truncation and labels of seeded
    samples."""
    params: dict[str, Parameter] = {"onnx_sha256": model.manifest.onnx_sha256, "provider": model.provider}
    if plan.seed is not None:
        params |= {"seed": plan.seed, "offset": plan.indices[0] if plan.indices else 0}
    if truncation is not None:
        params["truncation"] = truncation
    if plan.seed is not None and plan.labels is not None:
        params["labels"] = ",".join(str(int(v)) for v in plan.labels)
    return params


@dataclass(frozen=True)
class Planned:
    """What an inference request computes (the plan) and how its `x` goes back."""

    plan: plans.Plan
    datatype: str  # FP32 or UINT8
    binary: bool
    truncation: float | None = None


async def plan_inference(
    parsed: v2_tensors.Request, model: ReadyModel, settings: Settings, raw: bool = False
) -> Planned:
    """The rows a read request asks for: its tensors, or the native plan of its sample parameters.

    `raw`: x always goes back as raw bytes (gRPC), whatever the binary-data parameters say."""
    manifest = model.manifest
    datatype, binary = output_choice(parsed.header, manifest)
    binary = binary or raw
    sample = check_parameters(parsed.header)
    if parsed.header.inputs:
        plan = tensor_plan(parsed, manifest, settings)
        check_output_size(plan.rows, manifest, datatype, binary, settings, "inputs")
        return Planned(plan, datatype, binary)
    native = generate_request(model.name, model.version, sample)
    seed = plans.chosen_seed(native.seed)
    try:
        plans.check_limit(native.n, settings.max_n, "n", "GAN_MAX_N")
        check_output_size(native.n, manifest, datatype, binary, settings, "n")
        plan = await offload(native.n, plans.generate_plan, native, manifest, settings, seed)
    except plans.PlanError as error:  # its fields are the parameters'
        raise TensorError(error.detail, f"parameters.{error.field}") from None
    return Planned(plan, datatype, binary, native.truncation)


def served_x(x: np.ndarray, datatype: str) -> np.ndarray:
    """FP32 in the graph's layout, or UINT8 NHWC images (the bytes of /generate's npy)."""
    return encoding.to_uint8_nhwc(x) if datatype == "UINT8" else x.astype(np.float32, copy=False)


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


def not_ready(state: AppState) -> str | None:
    """Why the server is not ready (as /readyz: models loaded, on CUDA when GAN_DEVICE=cuda, not draining)."""
    if state.draining:
        return "the service is draining"
    if not state.repository.ready():
        reasons = [
            f"{m.key}: {m.reason or f'provider {m.provider}'}"
            for m in state.repository.all()
            if m.status != "ready"
        ]
        return "not ready: " + ("; ".join(reasons) or "no model loaded")
    return None


@router.get("/health/ready", response_model=ReadyResponse)
async def server_ready(state: StateDep) -> JSONResponse:
    """Readiness, as /readyz: models loaded (on CUDA when GAN_DEVICE=cuda) and not draining."""
    reason = not_ready(state)
    return JSONResponse({"ready": True}) if reason is None else v2_error(503, reason)


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "gan-serving", "version": request.app.version, "extensions": EXTENSIONS}


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
