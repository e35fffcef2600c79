"""Every failure becomes JSON `{"detail": message, "field": name}` with the right status code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.batcher import BatchFailed, DeadlineExceeded, Draining, QueueFull
from service.control import ControlError
from service.plans import PlanError
from service.repository import ModelNotFound, ModelUnavailable
from service.state import AppState


class ApiError(Exception):
    def __init__(
        self, status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers


class ClientGone(Exception):
    """The client disconnected before its rows were computed."""


class EditingUnavailable(Exception):
    """The version has no ready encoder: it generates, but cannot edit (the message says why)."""


@dataclass(frozen=True)
class Problem:
    """How one failure is answered; `reason` labels gan_rejections_total (None: not a rejection)."""

    status: int
    detail: str
    field: str | None = None
    headers: dict[str, str] | None = None
    reason: str | None = None


RETRY_NOW = {"Retry-After": "1"}


def problem_of(error: Exception, state: AppState) -> Problem | None:
    """The answer to each failure the service knows; None for anything else (a bug: a 500)."""
    match error:
        case PlanError():
            return Problem(422, error.detail, error.field, reason="invalid")
        case ApiError():
            reason = "invalid" if error.status == 422 else None
            return Problem(error.status, error.detail, error.field, error.headers, reason)
        case ModelNotFound():
            return Problem(404, str(error), "model")
        case ModelUnavailable():
            return Problem(503, str(error), "model", reason="model_failed")
        case QueueFull():
            return Problem(429, str(error), None, {"Retry-After": str(error.retry_after_s)}, "queue_full")
        case DeadlineExceeded():
            timeout = state.settings.request_timeout_s
            return Problem(
                504, f"not computed within GAN_REQUEST_TIMEOUT_S = {timeout:g} s", reason="deadline"
            )
        case Draining():
            return Problem(503, str(error), None, RETRY_NOW, "draining")
        case BatchFailed():
            return Problem(500, str(error), reason="inference_error")
        case ClientGone():
            return Problem(499, "client closed the request", reason="client_gone")
        case EditingUnavailable():
            return Problem(409, str(error), "model", reason="no_encoder")
        case ControlError():
            return Problem(400, str(error), "model")
    return None


def v2_path(path: str) -> bool:
    """Open Inference Protocol paths answer errors in its shape, `{"error": "..."}`."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def problem_response(error: Exception, state: AppState, model: str = "") -> JSONResponse:
    """The JSON answer to `error`, counted as a rejection of `model` ("" before a known model is named).

    The answer names the model in `X-Model`, as sample responses do, so the request metrics can label it.
    Unknown errors are raised again.
    """
    problem = problem_of(error, state)
    if problem is None:
        raise error
    if problem.reason is not None:
        state.metrics.rejections.labels(model, problem.reason).inc()
    headers = (problem.headers or {}) | ({"X-Model": model} if model else {})
    return error_response(problem.status, problem.detail, problem.field, headers or None)


# Union members add their type name to the location ("labels.int"); it says nothing to a client.
_TYPE_NAMES = {"int", "str", "list[union[int,str]]", "function-after[_one_source()]"}


def validation_error_response(errors: Sequence[Any]) -> JSONResponse:
    """422 naming the first failing field, with every problem in the detail."""
    parts, first = [], None
    for item in errors:
        # Malformed JSON is the body's fault; FastAPI puts a character offset in its loc.
        json_error = item["type"] == "json_invalid"
        loc = [str(p) for p in item["loc"] if p != "body" and str(p) not in _TYPE_NAMES and not json_error]
        name = ".".join(loc) or "body"
        first = first or name
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return error_response(422, "; ".join(parts), first)


ANSWERED = (
    PlanError,
    ApiError,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    DeadlineExceeded,
    Draining,
    BatchFailed,
    ClientGone,
    EditingUnavailable,
)


def install_error_handlers(app: FastAPI, state: AppState) -> None:
    """Errors raised outside a model's routes (unknown paths, bodies that fail validation, ...)."""

    async def known(request: Request, error: Exception) -> JSONResponse:
        return problem_response(error, state)

    for kind in ANSWERED:
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        state.metrics.rejections.labels("", "invalid").inc()
        return validation_error_response(error.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # the body is not even text: FastAPI's "error parsing the body"
            state.metrics.rejections.labels("", "invalid").inc()
            return error_response(422, "body: not valid JSON (UTF-8 text expected)", "body")
        if v2_path(request.url.path):
            return JSONResponse({"error": str(error.detail)}, error.status_code, dict(error.headers or {}))
        field = "path" if error.status_code in (404, 405) else None
        return error_response(error.status_code, str(error.detail), field, dict(error.headers or {}))
