"""Triton's model repository extension over HTTP: index, load, unload (service.control does the work).

The gate admits these only with the admin key (GAN_ADMIN_KEY; without one they answer 403). Load and unload take
an optional body `{"parameters": {}}`; Triton's `config` and file overrides are not supported and are refused by
name (`unload_dependents` is accepted and means nothing: there are no ensembles). Errors are the protocol's `{"error": "..."}`: 400 for a load that failed, 404 for an unknown model.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import ApiError
from service.protocols.v2_errors import v2_errors, v2_problem_response
from service.routes import StateDep, model_label
from service.versions import ReadyModel

# Triton's unload flag for ensembles' members: this service has no ensembles, so nothing depends on a model
IGNORED_PARAMETERS = {"unload_dependents"}

router = APIRouter(prefix="/v2/repository", tags=["model control (Triton repository extension)"])


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="only the versions that serve")


class IndexRow(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str


class ControlResponse(BaseModel):
    name: str
    versions: list[str] = Field(
        description="the versions that serve after the call (the highest is the default)"
    )


async def read_json(request: Request, field: str) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as error:
        raise ApiError(400, f"the body is not JSON: {error}", field) from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "the body must be a JSON object", field)
    return parsed


def check_parameters(body: dict[str, Any]) -> None:
    extra = sorted(set(body) - {"parameters"})
    if extra:
        raise ApiError(400, f"unknown field(s) {extra}; only 'parameters' is accepted", extra[0])
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "must be an object", "parameters")
    parameters = {k: v for k, v in parameters.items() if k not in IGNORED_PARAMETERS}
    if parameters:
        raise ApiError(
            400,
            f"not supported: {sorted(parameters)} (a load reads the model's folder as it is on disk)",
            f"parameters.{sorted(parameters)[0]}",
        )


def serving(request: Request, name: str) -> dict[str, Any]:
    versions = request.app.state.gan.repository.models.get(name, {})
    ready = [str(n) for n, m in sorted(versions.items()) if isinstance(m, ReadyModel)]
    return {"name": name, "versions": ready}


@router.post("/index", response_model=list[IndexRow], responses=v2_errors(400, 401, 403))
async def repository_index(request: Request, state: StateDep) -> Response:
    """Every model on disk or loaded, a row per version, with its state and why it is not ready."""
    try:
        body = IndexRequest.model_validate(await read_json(request, "body"))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, 400)
    except ApiError as error:
        return v2_problem_response(error, state)
    rows = [row.__dict__ for row in state.control.index(ready_only=body.ready)]
    return JSONResponse(rows)


@router.post("/models/{model_name}/load", response_model=ControlResponse, responses=v2_errors(400, 401, 403))
async def repository_load(model_name: str, request: Request, state: StateDep) -> Response:
    """(Re)load the model from its folder beside the serving versions, then make it the default."""
    try:
        check_parameters(await read_json(request, "body"))
        await state.control.load(model_name)
        return JSONResponse(serving(request, model_name), headers={"X-Model": model_name})
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, model_name))


@router.post(
    "/models/{model_name}/unload", response_model=ControlResponse, responses=v2_errors(400, 401, 403, 404)
)
async def repository_unload(model_name: str, request: Request, state: StateDep) -> Response:
    """Take every version of the model out of service; each closes once the requests it holds are answered."""
    try:
        check_parameters(await read_json(request, "body"))
        label = model_label(state, model_name)
        await state.control.unload(model_name)
        return JSONResponse(serving(request, model_name), headers={"X-Model": label} if label else None)
    except Exception as error:
        return v2_problem_response(error, state, model_label(state, model_name))
