"""The hot path: POST /generate with a JSON body, answered without FastAPI's routing and dependency layers.

At n = 1 the service is bound by the event loop's time per request, and FastAPI's routing, dependency solving
and body handling are about half of it. This path runs the same `generate` handler on the same validated
`GenerateRequest` (parsed by pydantic straight from the bytes), and turns exceptions into responses with the
app's own exception handlers, so the answers are the ones the FastAPI route gives (tests compare both).
The route stays declared for OpenAPI and serves whatever this path does not take (other content types).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import validation_error_response
from service.routes import generate
from service.schemas import GenerateRequest
from service.state import AppState

JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


def takes(scope: Scope) -> bool:
    """POST /generate whose content-type is JSON (anything else goes the FastAPI way)."""
    if scope["path"] != "/generate" or scope["method"] != "POST":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.lower() in JSON_TYPES)
    return False


class FastGenerate:
    def __init__(self, app: FastAPI, state: AppState) -> None:
        self.app, self.state = app, state

    def _handler(self, error: Exception) -> Any:
        for kind in type(error).__mro__:
            if kind in self.app.exception_handlers:
                return self.app.exception_handlers[kind]
        return None

    async def __call__(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        scope.setdefault("app", self.app)
        scope.setdefault("state", {})
        request = Request(scope, receive)
        response: Response
        try:
            try:
                parsed = GenerateRequest.model_validate_json(body)
            except ValidationError as error:
                self.state.metrics.rejections.labels("", "invalid").inc()
                response = validation_error_response(error.errors())
            else:
                response = await generate(parsed, request, self.state)
        except Exception as error:
            handler = self._handler(error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)
