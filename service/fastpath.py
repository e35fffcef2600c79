"""The hot path: POST /generate with a JSON body, answered without FastAPI's routing and dependency layers.

At n = 1 the service is bound by the event loop's time per request, and FastAPI's routing, dependency solving
and body handling are a large share of it. This path runs the same `generate` handler on the same validated
`GenerateRequest` (parsed by pydantic straight from the bytes); the handler answers its own errors, so the
answers are the ones the FastAPI route gives (tests compare both). The route stays declared for OpenAPI and
serves whatever this path does not take (other content types).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import validation_error_response
from service.routes import generate
from service.schemas import GenerateRequest
from service.state import AppState

JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class FastGenerate:
    def __init__(self, app: FastAPI, state: AppState) -> None:
        self.app, self.state = app, state

    @staticmethod
    def takes(scope: Scope) -> bool:
        """POST /generate whose content-type is JSON (anything else goes the FastAPI way)."""
        if scope["path"] != "/generate" or scope["method"] != "POST":
            return False
        for name, value in scope["headers"]:
            if name == b"content-type":
                return bool(value.lower() in JSON_TYPES)
        return False

    async def __call__(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        scope.setdefault("app", self.app)
        response: Response
        try:
            parsed = GenerateRequest.model_validate_json(body)
        except ValidationError as error:
            self.state.metrics.rejections.labels("", "invalid").inc()
            response = validation_error_response(error.errors())
        else:
            response = await generate(parsed, Request(scope, receive), self.state)
        await response(scope, receive, send)
