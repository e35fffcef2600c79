"""HTTP routes: validate, build latents, hand rows to the model's batcher, encode. The maths lives elsewhere."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service import encoding
from service.batcher import Feeds
from service.errors import ApiError, ClientGone
from service.latents import MAX_SEED, latents, lerp, one_hot, sample_latent, slerp
from service.manifest import Manifest
from service.repository import ModelVersion
from service.schemas import (
    AugmentRequest,
    Endpoint,
    ErrorResponse,
    GenerateRequest,
    HealthResponse,
    InterpolateRequest,
    Label,
    SamplesResponse,
)
from service.settings import Settings
from service.state import AppState


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        401: "missing or unknown API key (when keys are configured)",
        404: "no such model or version",
        413: "request body over GAN_MAX_BODY_BYTES",
        422: "invalid request: `field` names the field, `detail` the limit",
        429: "queue full: retry after the Retry-After header's seconds",
        503: "draining, or the model failed to load (Retry-After on draining)",
        504: "not computed within GAN_REQUEST_TIMEOUT_S",
    }
    return {code: {"model": ErrorResponse, "description": what[code]} for code in codes}


# Every route may answer 401 (API keys) and 503 (draining); the bodies of all errors are ErrorResponse.
router = APIRouter(responses=_errors(401, 503))
SAMPLE_ERRORS = _errors(404, 413, 422, 429, 504)
SAMPLES_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "samples: JSON (format png or json), or a .npy array (format npy) with X-* provenance headers",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
# Below this many rows, latents and encoding run inline: a thread hop costs more than the work, and the
# work is mostly Python holding the GIL, so a thread would only make the event loop wait for it.
INLINE_ROWS = 32


async def offload(rows: int, function: Any, *args: Any) -> Any:
    return function(*args) if rows <= INLINE_ROWS else await run_in_threadpool(function, *args)


async def get_state(request: Request) -> AppState:  # async: a sync dependency costs a thread-pool hop
    state: AppState = request.app.state.gan
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def lookup(state: AppState, request: Request, name: str, version: int | None) -> ModelVersion:
    request.state.model = name if name in state.repository.models else ""  # known names only: bounded labels
    return state.repository.get(name, version)


def _manifest(model: ModelVersion) -> Manifest:
    assert model.manifest is not None
    return model.manifest


def resolve_label(label: Label, manifest: Manifest, field: str) -> int:
    if not manifest.num_classes:
        raise ApiError(422, f"model {manifest.name} is unconditional: it takes no labels", field)
    if isinstance(label, str):
        if label in manifest.class_names:
            return manifest.class_names.index(label)
        if not label.isdigit():
            raise ApiError(422, f"unknown class '{label}'; classes: {manifest.class_names}", field)
        label = int(label)
    if not 0 <= label < manifest.num_classes:
        raise ApiError(422, f"label {label} out of range: must be 0 .. {manifest.num_classes - 1}", field)
    return label


def resolve_labels(
    labels: Label | list[Label] | None, manifest: Manifest, n: int, offset: int
) -> np.ndarray | None:
    """One label per sample; without labels a conditional model cycles through its classes by sample index."""
    if labels is None:
        return (np.arange(offset, offset + n) % manifest.num_classes) if manifest.num_classes else None
    if isinstance(labels, list):
        if len(labels) != n:
            raise ApiError(422, f"labels has {len(labels)} entries but n is {n}", "labels")
        return np.array(
            [resolve_label(v, manifest, f"labels[{i}]") for i, v in enumerate(labels)], dtype=np.int64
        )
    return np.full(n, resolve_label(labels, manifest, "labels"), dtype=np.int64)


async def run_model(
    model: ModelVersion, feeds: Feeds, n: int, request: Request, state: AppState
) -> np.ndarray:
    """Submit to the batcher; if the client disconnects first, cancel so its rows are never computed."""
    assert model.batcher is not None
    result = model.batcher.enqueue(feeds, n, state.settings.request_timeout_s)
    gone = asyncio.ensure_future(_disconnected(request))
    gone.add_done_callback(lambda _: result.cancel())  # a no-op once the result is in
    try:
        x = await result
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled():
            raise ClientGone() from None
        raise
    finally:
        gone.cancel()
    state.metrics.samples.labels(model.name).inc(n)
    return x


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _headers(model: ModelVersion, seed: int | None, start: int, count: int) -> dict[str, str]:
    manifest = _manifest(model)
    headers = {
        "X-Model": model.name,
        "X-Model-Version": str(model.version),
        "X-Onnx-Sha256": manifest.onnx_sha256,
        "X-Provider": model.provider or "",
        "X-Sample-Start": str(start),
        "X-Sample-Count": str(count),
    }
    if seed is not None:
        headers["X-Seed"] = str(seed)
    return headers


async def encode_samples(
    x: np.ndarray, fmt: str, model: ModelVersion, seed: int | None, indices: list[int], **extra: Any
) -> Response:
    manifest = _manifest(model)
    if fmt == "npy":
        array = encoding.to_uint8_nhwc(x) if manifest.kind == "image" else x.astype(np.float32)
        body = await offload(len(array), encoding.npy_bytes, array)
        start = indices[0] if indices else 0
        return Response(
            body, media_type="application/octet-stream", headers=_headers(model, seed, start, len(indices))
        )
    payload = SamplesResponse(
        model=model.name, version=model.version, onnx_sha256=manifest.onnx_sha256, provider=model.provider or "",
        seed=seed, indices=indices, format=fmt, shape=manifest.output_shape, **extra,
    )  # fmt: skip
    if fmt == "png" and manifest.kind == "image":
        payload.images = await offload(len(x), encoding.png_base64, encoding.to_uint8_nhwc(x))
    else:  # json, and png requests to vector models: points are numbers
        payload.format = "json"
        payload.data = x.reshape(len(x), -1).astype(float).tolist()
    return JSONResponse(payload.model_dump(exclude_none=True))


# Bytes one sample value costs in each response format: uint8 pixels (PNG and base64 add at most about 1.4x
# over raw bytes for these small images), float32 vectors, JSON numbers as text.
VALUE_BYTES = {("image", "png"): 2, ("image", "npy"): 1, ("image", "npz"): 1, ("image", "json"): 24}


def check_response_size(settings: Settings, manifest: Manifest, rows: int, fmt: str, field: str) -> None:
    per_value = VALUE_BYTES.get((manifest.kind, fmt), 4 if fmt in ("npy", "npz") else 24)
    size = rows * int(np.prod(manifest.output_shape)) * per_value
    if size > settings.max_response_bytes:
        raise ApiError(
            422,
            f"{rows} rows of {manifest.name} as {fmt} would be about {size} bytes; at most "
            f"{settings.max_response_bytes} (GAN_MAX_RESPONSE_BYTES): ask for fewer rows or a binary format",
            field,
        )


@router.post("/generate", response_model=SamplesResponse, responses=SAMPLES_200 | SAMPLE_ERRORS)
async def generate(body: GenerateRequest, request: Request, state: StateDep) -> Response:
    """Generate `n` samples. Sample i of seed s is the same whatever the batch, request size or offset."""
    model = lookup(state, request, body.model, body.version)
    manifest = _manifest(model)
    if body.n > state.settings.max_n:
        raise ApiError(422, f"n must be <= {state.settings.max_n} (GAN_MAX_N), got {body.n}", "n")
    check_response_size(state.settings, manifest, body.n, body.format, "n")
    labels = resolve_labels(body.labels, manifest, body.n, body.offset)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    z = await offload(body.n, latents, seed, body.offset, body.n, manifest.z_dim, body.truncation)
    feeds = {"z": z} | ({"c": one_hot(labels, manifest.num_classes)} if labels is not None else {})
    x = await run_model(model, feeds, body.n, request, state)
    indices = list(range(body.offset, body.offset + body.n))
    extra = {"labels": labels.tolist() if labels is not None else None, "truncation": body.truncation}
    return await encode_samples(x, body.format, model, seed, indices, **extra)


def endpoint_latent(end: Endpoint, manifest: Manifest, truncation: float | None, field: str) -> np.ndarray:
    if end.z is None:
        assert end.seed is not None
        return sample_latent(end.seed, 0, manifest.z_dim, truncation)
    z = np.asarray(end.z, dtype=np.float64)
    if len(z) != manifest.z_dim:
        raise ApiError(
            422, f"z has length {len(z)}; model {manifest.name} needs z_dim = {manifest.z_dim}", f"{field}.z"
        )
    if not np.isfinite(z).all() or np.abs(z).max() > 1e4:
        raise ApiError(422, "z must be finite numbers with |z| <= 10000", f"{field}.z")
    return z.astype(np.float32)


@router.post("/interpolate", response_model=SamplesResponse, responses=SAMPLES_200 | SAMPLE_ERRORS)
async def interpolate(body: InterpolateRequest, request: Request, state: StateDep) -> Response:
    """A path of `steps` samples from `start` to `end` (both included); labels blend through soft `c`."""
    model = lookup(state, request, body.model, body.version)
    manifest = _manifest(model)
    if body.steps > state.settings.max_steps:
        raise ApiError(
            422, f"steps must be <= {state.settings.max_steps} (GAN_MAX_STEPS), got {body.steps}", "steps"
        )
    check_response_size(state.settings, manifest, body.steps, body.format, "steps")
    za = endpoint_latent(body.start, manifest, body.truncation, "start")
    zb = endpoint_latent(body.end, manifest, body.truncation, "end")
    t = np.linspace(0.0, 1.0, body.steps)
    feeds = {"z": (slerp if body.method == "slerp" else lerp)(za, zb, t)}
    if manifest.num_classes:
        ends = []
        for name, end in (("start", body.start), ("end", body.end)):
            if end.label is None:
                raise ApiError(422, f"model {manifest.name} is conditional: give a label", f"{name}.label")
            ends.append(
                one_hot(
                    np.array([resolve_label(end.label, manifest, f"{name}.label")]), manifest.num_classes
                )[0]
            )
        feeds["c"] = lerp(ends[0], ends[1], t)
    else:
        for name, end in (("start", body.start), ("end", body.end)):
            if end.label is not None:
                raise ApiError(
                    422, f"model {manifest.name} is unconditional: it takes no labels", f"{name}.label"
                )
    x = await run_model(model, feeds, body.steps, request, state)
    return await encode_samples(x, body.format, model, None, list(range(body.steps)), t=t.tolist())


def augment_plan(body: AugmentRequest, manifest: Manifest) -> np.ndarray:
    """Synthetic rows per class (length num_classes), or [n] for an unconditional model."""
    if not manifest.num_classes:
        if body.n is None:
            raise ApiError(
                422, f"model {manifest.name} is unconditional: give 'n', not per-class counts", "n"
            )
        return np.array([body.n], dtype=np.int64)
    if body.n is not None:
        raise ApiError(422, f"model {manifest.name} is conditional: give 'per_class' or 'class_counts'", "n")
    field = "per_class" if body.per_class is not None else "class_counts"
    counts = np.zeros(manifest.num_classes, dtype=np.int64)
    given = body.per_class if body.per_class is not None else body.class_counts
    if isinstance(given, list):
        if len(given) != manifest.num_classes:
            raise ApiError(
                422, f"has {len(given)} entries; the model has {manifest.num_classes} classes", field
            )
        counts[:] = given
    else:
        assert given is not None
        for key, value in given.items():
            counts[resolve_label(key, manifest, f"{field}.{key}")] += value
    if body.class_counts is None:
        return counts
    planned: np.ndarray = (
        counts.max() - counts if body.target == "balance" else np.rint(counts * (body.ratio or 0.0))
    )
    return planned.astype(np.int64)


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
    model = lookup(state, request, body.model, body.version)
    manifest = _manifest(model)
    settings = state.settings
    counts = augment_plan(body, manifest)
    total = int(counts.sum())
    field = "n" if body.n is not None else ("per_class" if body.per_class is not None else "class_counts")
    if total > settings.max_augment_rows:
        raise ApiError(
            422,
            f"the set would have {total} rows; at most {settings.max_augment_rows} (GAN_MAX_AUGMENT_ROWS)",
            field,
        )
    if total == 0:
        raise ApiError(422, "the plan asks for 0 synthetic rows", field)
    if body.offset >= total:
        raise ApiError(422, f"offset must be < {total} (the set's size), got {body.offset}", "offset")
    limit = body.limit if body.limit is not None else min(settings.max_page_rows, total - body.offset)
    if limit > settings.max_page_rows:
        raise ApiError(
            422, f"limit must be <= {settings.max_page_rows} (GAN_MAX_PAGE_ROWS), got {limit}", "limit"
        )
    rows = min(limit, total - body.offset)
    check_response_size(settings, manifest, rows, body.format, "limit")
    index = np.arange(body.offset, body.offset + rows)
    y = np.repeat(np.arange(len(counts)), counts)[index] if manifest.num_classes else None
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    z = await offload(rows, latents, seed, body.offset, rows, manifest.z_dim, body.truncation)
    feeds = {"z": z} | ({"c": one_hot(y, manifest.num_classes)} if y is not None else {})
    x = await run_model(model, feeds, rows, request, state)
    headers = _headers(model, seed, body.offset, rows) | {"X-Total-Rows": str(total)}
    if body.format == "png":
        response = await encode_samples(
            x, "png", model, seed, index.tolist(), labels=None if y is None else y.tolist()
        )
        response.headers.update({"X-Total-Rows": str(total)})
        return response
    x_out = encoding.to_uint8_nhwc(x) if manifest.kind == "image" else x.astype(np.float32)
    arrays = {"x": x_out, "seed": np.array(seed, dtype=np.uint64), "index": index.astype(np.int64)}
    if y is not None:
        arrays |= {"y": y.astype(np.int64), "class_names": np.array(manifest.class_names)}
    body_bytes = await offload(rows, lambda: encoding.npz_bytes(**arrays))
    return Response(body_bytes, media_type="application/octet-stream", headers=headers)


def describe(model: ModelVersion, default: int | None) -> dict[str, Any]:
    gates = model.manifest.gate_results() if model.manifest else []
    return {
        "version": model.version,
        "status": model.status,
        "reason": model.reason,
        "default": model.version == default,
        "provider": model.provider,
        "load_seconds": round(model.load_seconds, 4),
        "queue_rows": model.batcher.queued_rows if model.batcher else 0,
        "quality": {
            "metrics": model.manifest.metrics,
            "gates": [g.model_dump() for g in gates],
            "passed": bool(gates) and all(g.passed for g in gates),
        }
        if model.manifest
        else None,
        "manifest": model.manifest.model_dump(mode="json") if model.manifest else None,
    }


def describe_model(state: AppState, name: str) -> dict[str, Any]:
    versions = state.repository.models[name]
    ready = [v.version for v in versions.values() if v.status == "ready"]
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


@router.get("/models/{name}", responses=_errors(404))
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
