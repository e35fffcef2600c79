"""How the Open Inference Protocol answers failures, shared by HTTP (`v2`) and gRPC (`grpc_v2`).

A failure is the native API's `Problem` (service.errors), with the tensors' own errors (`TensorError`: 400, or
413 for a body too large) added; its message is "field: detail". Over HTTP it is `{"error": "..."}`, 400 where
the native API says 422; gRPC turns the same problem into a status (service.protocols.grpc_v2_calls).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.errors import Problem, problem_of
from service.protocols import v2_tensors
from service.protocols.v2_tensors import TensorError
from service.state import AppState


class V2Error(BaseModel):
    error: str


def v2_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the error answers `codes`."""
    what = {
        400: "a request the model cannot take: the message names the field and the limit",
        401: "missing or unknown API key (when keys are configured); for model control, the admin key",
        403: "model control is disabled: no GAN_ADMIN_KEY is set",
        404: "no such model or version",
        413: "request body over GAN_MAX_BODY_BYTES (inflated, when compressed)",
        429: "queue full: retry after the Retry-After header's seconds",
        503: "draining, not ready, or the model failed to load",
        504: "not computed within GAN_REQUEST_TIMEOUT_S",
    }
    return {code: {"model": V2Error, "description": what[code]} for code in codes}


def v2_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def problem(error: Exception, state: AppState) -> Problem | None:
    """The problem `error` stands for, or None for an unknown error (a bug: a 500)."""
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


def counted_problem(error: Exception, state: AppState, model: str) -> Problem | None:
    """`problem(error)`, counted as the native routes count rejections of `model`."""
    found = problem(error, state)
    if found is not None and found.reason is not None:
        state.metrics.rejections.labels(model, found.reason).inc()
    return found


def message(found: Problem) -> str:
    return f"{found.field}: {found.detail}" if found.field else found.detail


def v2_problem_response(error: Exception, state: AppState, model: str = "") -> JSONResponse:
    """The protocol's answer to `error`: `{"error": "field: detail"}`, 400 where the native API says 422.

    Counted as the native routes count rejections; unknown errors are raised again (a 500)."""
    found = counted_problem(error, state, model)
    if found is None:
        raise error
    headers = (found.headers or {}) | ({"X-Model": model} if model else {})
    return v2_error(400 if found.status == 422 else found.status, message(found), headers or None)
