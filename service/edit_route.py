"""POST /edit: images in (JSON with base64, or multipart files), encoded, edited, decoded, with provenance."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from service import tracing
from service.editing import edit_plan
from service.errors import problem_response
from service.images import ImageError, from_base64
from service.inference import encode_images, run_model
from service.responses import samples_response
from service.routes import SAMPLE_ERRORS, SAMPLES_200, StateDep, error_responses, model_label
from service.schemas import EditFields, EditRequest

router = APIRouter(responses=error_responses(401, 503))

FORM_FIELDS = ("edit.label", "edit.direction", "edit.strength", "edit.mix_seed", "edit.t", "edit.method",
               "edit.truncation", "model", "version", "labels", "resize", "return_latents", "format")  # fmt: skip
EDIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EditRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model", "image"],
                "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}
                | {name: {"type": "string"} for name in FORM_FIELDS},
            }
        },
    },
}


async def read_form(request: Request, max_images: int) -> tuple[EditFields, list[bytes]]:
    """Multipart: `image` files (repeatable) and the fields as form values (`edit.label=Dress`)."""
    try:
        form = await request.form(max_files=max_images + 1, max_fields=len(FORM_FIELDS) + max_images)
    except MultiPartException as error:
        raise ImageError(f"not a readable multipart form: {error.message}", "body") from None
    images: list[bytes] = []
    fields: dict[str, Any] = {}
    edit: dict[str, Any] = {}
    try:
        labels = form.getlist("labels")
        for name, value in form.multi_items():
            if name == "image":
                if not isinstance(value, UploadFile):
                    raise ImageError("image must be a file (-F image=@a.png), not a text value", "image")
                images.append(await value.read())
            elif name.startswith("edit."):
                edit[name.removeprefix("edit.")] = value
            elif name != "labels":
                fields[name] = value
    finally:
        await form.close()
    if labels:
        fields["labels"] = labels if len(labels) > 1 else labels[0]
    if edit:
        fields["edit"] = edit
    try:
        parsed = EditFields.model_validate(fields, strict=False)  # form values are text: "3" may mean 3
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    if not images:
        raise ImageError("send at least one image file: -F image=@a.png", "image")
    return parsed, images


async def read_json(request: Request) -> tuple[EditFields, list[bytes]]:
    try:
        body = EditRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    return body, [from_base64(text, f"images[{i}]") for i, text in enumerate(body.images)]


@router.post(
    "/edit",
    response_model=None,
    responses=SAMPLES_200 | SAMPLE_ERRORS | error_responses(409),
    openapi_extra={"requestBody": EDIT_BODY},
)
async def edit(request: Request, state: StateDep) -> Response:
    """Edit given images: z = E(x), z' = edit(z), x' = G(z'). One operation per request (default: reconstruct).

    JSON `{"model", "images": [base64 PNG/JPEG], "labels"?, "edit"?: {...}}` or multipart
    (`-F image=@a.png -F model=fashion-cgan -F edit.label=Dress`). Images must be the model's H x W unless
    `resize` is true; grey models take the luma of colour images, colour models repeat grey ones.
    """
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    name = ""
    try:
        if multipart:
            body, images = await read_form(request, state.settings.max_edit_images)
        else:
            body, images = await read_json(request)
        name = body.model
        model = state.repository.get(body.model, body.version, editable=True)
        z, classes = await encode_images(model, images, body.labels, body.resize, "images", request, state)
        plan = edit_plan(z, classes, body.edit, model.manifest)
        tracing.annotate(model.name, model.version, plan.rows, body.format)
        x = await run_model(model, plan.feeds, plan.rows, request, state)
        assert model.encoder is not None  # encode_images refuses a model without one
        extra: dict[str, Any] = {
            "encoder_sha256": model.encoder.sha256,
            "edit": {"operation": "reconstruct"}
            if body.edit is None
            else {"operation": body.edit.kind} | body.edit.model_dump(exclude_none=True),
            "latents": np.asarray(z, dtype=float).tolist() if body.return_latents else None,
        }
        return await samples_response(
            x, body.format, model, plan, extra=extra, png_provenance=state.settings.png_provenance
        )
    except RequestValidationError:
        raise
    except Exception as error:
        return problem_response(error, state, model_label(state, name))
