"""HTTP routes: validate (schemas), plan (service.plans), batch (the model's batcher), respond (service.responses)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import plans, tracing
from service.editing import variations_plan
from service.errors import ApiError, problem_response
from service.images import from_base64
from service.inference import encode_images, run_model
from service.offload import offload
from service.responses import samples_response
from service.schemas import (
    AugmentRequest,
    ErrorResponse,
    GenerateRequest,
    HealthResponse,
    InterpolateRequest,
    SamplesResponse,
    Variations,
)
from service.state import AppState
from service.versions import ModelVersion, ReadyModel


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        401: "missing or unknown API key (when keys are configured)",
        404: "no such model or version",
        409: "the model version cannot do this (no encoder, or its encoder failed to load): `detail` says why",
        413: "request body over GAN_MAX_BODY_BYTES",
        422: "invalid request: `field` names the field, `detail` the limit",
        429: "queue full: retry after the Retry-After header's seconds",
        503: "draining, or the model failed to load (Retry-After on draining)",
        504: "not computed within GAN_REQUEST_TIMEOUT_S",
    }
    return {code: {"model": ErrorResponse, "description": what[code]} for code in codes}


# Every route may answer 401 (API keys) and 503 (draining); the bodies of all errors are ErrorResponse.
router = APIRouter(responses=error_responses(401, 503))
SAMPLE_ERRORS = error_responses(404, 413, 422, 429, 504)
SAMPLES_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "samples: JSON (format png or json), or a .npy array (format npy) with X-* provenance headers",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def get_state(request: Request) -> AppState:  # async: a sync dependency costs a thread-pool hop
    state: AppState = request.app.state.gan
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def untruncated(body: GenerateRequest | AugmentRequest) -> bool | None:
    """Truncated latents are not samples of the distribution the output monitor's reference describes: False
    keeps them out of it; None lets the monitor decide by the request (service.monitor.counted)."""
    return False if body.truncation is not None else None


def model_label(state: AppState, name: str) -> str:
    """The name as a metrics label: known names only, so clients cannot create new time series."""
    return name if name in state.repository.models else ""


@router.post("/generate", response_model=SamplesResponse, responses=SAMPLES_200 | SAMPLE_ERRORS)
async def generate(body: GenerateRequest, request: Request, state: StateDep) -> Response:
    """Generate `n` samples. Sample i of seed s is the same whatever the batch, request size or offset."""
    try:
        model = state.repository.get(body.model, body.version)
        seed = plans.chosen_seed(body.seed)
        plan = await offload(body.n, plans.generate_plan, body, model.manifest, state.settings, seed)
        tracing.annotate(model.name, model.version, plan.rows, body.format)
        x = await run_model(model, plan.feeds, plan.rows, request, state, monitored=untruncated(body))
        return await samples_response(
            x, body.format, model, plan, body.truncation, png_provenance=state.settings.png_provenance
        )
    except Exception as error:
        return problem_response(error, state, model_label(state, body.model))


@router.post("/interpolate", response_model=SamplesResponse, responses=SAMPLES_200 | SAMPLE_ERRORS)
async def interpolate(body: InterpolateRequest, request: Request, state: StateDep) -> Response:
    """A path of `steps` samples from `start` to `end` (both included); labels blend through soft `c`."""
    try:
        model = state.repository.get(body.model, body.version)
        plan = plans.interpolate_plan(body, model.manifest, state.settings)
        tracing.annotate(model.name, model.version, plan.rows, body.format)
        x = await run_model(model, plan.feeds, plan.rows, request, state)
        return await samples_response(
            x, body.format, model, plan, png_provenance=state.settings.png_provenance
        )
    except Exception as error:
        return problem_response(error, state, model_label(state, body.model))


AUGMENT_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a page of the set: .npz (format npz) or JSON with base64 PNGs (format png)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/augment", response_model=SamplesResponse, responses=AUGMENT_200 | SAMPLE_ERRORS)
async def augment(body: AugmentRequest, request: Request, state: StateDep) -> Response:
    """A deterministic synthetic labelled set, served a page (`offset`, `limit`) at a time.

    Row j of the set has latent (seed, j) and the class given by the plan's order; any paging returns the
    same rows. `npz` holds x (uint8 NHWC images or float32 vectors), y, seed and index.
    """
    try:
        model = state.repository.get(body.model, body.version, editable=body.variations_of is not None)
        seed = plans.chosen_seed(body.seed)
        if body.variations_of is not None:
            plan = await variations_page(body, body.variations_of, model, seed, request, state)
        else:
            rows = min(body.limit or state.settings.max_page_rows, state.settings.max_page_rows)
            plan = await offload(rows, plans.augment_plan, body, model.manifest, state.settings, seed)
        tracing.annotate(model.name, model.version, plan.rows, body.format)
        x = await run_model(model, plan.feeds, plan.rows, request, state, monitored=untruncated(body))
        return await samples_response(
            x, body.format, model, plan, png_provenance=state.settings.png_provenance
        )
    except Exception as error:
        return problem_response(error, state, model_label(state, body.model))


async def variations_page(
    body: AugmentRequest, spec: Variations, model: ReadyModel, seed: int, request: Request, state: AppState
) -> plans.Plan:
    """A page of labelled variations of real images: their latents recovered by the model's encoder."""
    images = [from_base64(text, f"variations_of.images[{i}]") for i, text in enumerate(spec.images)]
    field = "variations_of.images"
    z, classes = await encode_images(model, images, spec.labels, spec.resize, field, request, state)
    rows = plans.page_rows(body, len(images) * spec.per_image, state.settings, model.manifest)
    return variations_plan(z, classes, spec, seed, body.offset, rows, model.manifest)


def describe(model: ModelVersion, default: int | None) -> dict[str, Any]:
    gates = model.manifest.gate_results() if model.manifest else []
    return {
        "version": model.version,
        "status": model.status,
        "reason": model.reason,
        "default": model.version == default,
        "provider": model.provider,
        "load_seconds": round(model.load_seconds, 4),
        "queue_rows": model.batcher.queued_rows if isinstance(model, ReadyModel) else 0,
        "quality": {
            "metrics": model.manifest.metrics,
            "gates": [g.model_dump() for g in gates],
            "passed": bool(gates) and all(g.passed for g in gates),
        }
        if model.manifest
        else None,
        "manifest": model.manifest.model_dump(mode="json") if model.manifest else None,
        "editing": editing(model),
    }


def editing(model: ModelVersion) -> dict[str, Any]:
    """Whether /edit serves this version: its encoder's provider and sha256, or why not."""
    if isinstance(model, ReadyModel) and model.encoder is not None:
        return {"available": True, "provider": model.encoder.provider, "encoder_sha256": model.encoder.sha256}
    reason = model.editing_reason if isinstance(model, ReadyModel) else f"model {model.key} failed to load"
    return {"available": False, "reason": reason}


def describe_model(state: AppState, name: str) -> dict[str, Any]:
    versions = state.repository.models[name]
    ready = [v.version for v in versions.values() if isinstance(v, ReadyModel)]
    default = max(ready) if ready else None
    return {
        "name": name,
        "default_version": default,
        "versions": [describe(v, default) for v in versions.values()],
    }


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    """Every model and version with status (ready, or failed with the reason), provider and manifest."""
    return {"models": [describe_model(state, name) for name in sorted(state.repository.models)]}


@router.get("/models/{name}", responses=error_responses(404))
async def get_model(name: str, state: StateDep) -> dict[str, Any]:
    if name not in state.repository.models:
        raise ApiError(404, f"model '{name}' not found; available: {sorted(state.repository.models)}", "name")
    return describe_model(state, name)


@router.get("/healthz", response_model=HealthResponse, response_model_exclude_none=True)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "loading, draining, or no model ready"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: models loaded (on CUDA when GAN_DEVICE=cuda) and not draining."""
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not state.repository.ready():
        reasons = {
            m.key: m.reason or f"provider {m.provider}" for m in state.repository.all() if m.status != "ready"
        }
        return JSONResponse({"status": "not ready", "models": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
