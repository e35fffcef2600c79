"""Every failure becomes JSON `{"detail": message, "field": name}` with the right status code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.batcher import BatchFailed, DeadlineExceeded, Draining, QueueFull
from service.repository import ModelNotFound, ModelUnavailable


class ApiError(Exception):
    def __init__(
        self, status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers


class ClientGone(Exception):
    """The client disconnected before its rows were computed."""


def error_response(
    status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def _model_label(request: Request) -> str:
    return str(getattr(request.state, "model", ""))


def _reject(request: Request, reason: str) -> None:
    request.app.state.gan.metrics.rejections.labels(_model_label(request), reason).inc()


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        if error.status == 422:
            _reject(request, "invalid")
        return error_response(error.status, error.detail, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        _reject(request, "invalid")
        return validation_error_response(error.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # the body is not even text: FastAPI's "error parsing the body"
            _reject(request, "invalid")
            return error_response(422, "body: not valid JSON (UTF-8 text expected)", "body")
        field = "path" if error.status_code in (404, 405) else None
        return error_response(error.status_code, str(error.detail), field, dict(error.headers or {}))

    @app.exception_handler(ModelNotFound)
    async def not_found(request: Request, error: ModelNotFound) -> JSONResponse:
        return error_response(404, str(error), "model")

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, error: ModelUnavailable) -> JSONResponse:
        _reject(request, "model_failed")
        return error_response(503, str(error), "model")

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        _reject(request, "queue_full")
        return error_response(429, str(error), None, {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(DeadlineExceeded)
    async def deadline(request: Request, error: DeadlineExceeded) -> JSONResponse:
        _reject(request, "deadline")
        timeout = request.app.state.gan.settings.request_timeout_s
        return error_response(504, f"not computed within GAN_REQUEST_TIMEOUT_S = {timeout:g} s", None)

    @app.exception_handler(Draining)
    async def draining(request: Request, error: Draining) -> JSONResponse:
        _reject(request, "draining")
        return error_response(503, str(error), None, {"Retry-After": "1"})

    @app.exception_handler(BatchFailed)
    async def batch_failed(request: Request, error: BatchFailed) -> JSONResponse:
        _reject(request, "inference_error")
        return error_response(500, str(error), None)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> JSONResponse:
        _reject(request, "client_gone")
        return error_response(499, "client closed the request", None)
