"""Sample responses: a plan's computed rows as JSON (base64 PNGs or numbers), .npy or .npz, with provenance."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Response

from service import encoding
from service.offload import offload
from service.plans import Plan
from service.schemas import SamplesResponse
from service.versions import ReadyModel


def provenance_headers(model: ReadyModel, plan: Plan) -> dict[str, str]:
    """A sample's identity (model, version, sha256, seed, index range) as headers on every response."""
    headers = {
        "X-Model": model.name,
        "X-Model-Version": str(model.version),
        "X-Onnx-Sha256": model.manifest.onnx_sha256,
        "X-Provider": model.provider,
        "X-Sample-Start": str(plan.indices[0] if plan.indices else 0),
        "X-Sample-Count": str(plan.rows),
    }
    if plan.seed is not None:
        headers["X-Seed"] = str(plan.seed)
    if plan.total_rows is not None:
        headers["X-Total-Rows"] = str(plan.total_rows)
    return headers


def served_array(x: np.ndarray, model: ReadyModel) -> np.ndarray:
    """What binary formats carry: uint8 NHWC images, or float32 vectors."""
    return encoding.to_uint8_nhwc(x) if model.manifest.kind == "image" else x.astype(np.float32)


async def samples_response(
    x: np.ndarray,
    fmt: str,
    model: ReadyModel,
    plan: Plan,
    truncation: float | None = None,
    extra: dict[str, Any] | None = None,
    *,
    png_provenance: bool,
) -> Response:
    """`png` (base64 PNGs, or numbers for vector models), `json` (numbers), `npy` or `npz` (arrays).

    `extra`: more provenance for the JSON body (/edit: the encoder's sha256, the operation, the latents);
    the encoder's sha256 and the operation also go into headers, for the binary formats.
    `png_provenance` (GAN_PNG_PROVENANCE): each PNG carries its own provenance and the IPTC marking inside.
    """
    headers = provenance_headers(model, plan)
    extra = extra or {}
    if extra.get("encoder_sha256"):
        headers["X-Encoder-Sha256"] = extra["encoder_sha256"]
    if extra.get("edit"):
        headers["X-Edit"] = str(extra["edit"]["operation"])
    if fmt == "npy":
        body = await offload(plan.rows, encoding.npy_bytes, served_array(x, model))
        return Response(body, media_type="application/octet-stream", headers=headers)
    if fmt == "npz":
        body = await offload(plan.rows, npz_page, x, model, plan)
        return Response(body, media_type="application/octet-stream", headers=headers)
    manifest = model.manifest
    fields: dict[str, Any] = {"truncation": truncation, "t": plan.t} | extra
    if plan.labels is not None:
        fields["labels"] = plan.labels.tolist()
    payload = SamplesResponse(
        model=model.name, version=model.version, onnx_sha256=manifest.onnx_sha256, provider=model.provider,
        seed=plan.seed, indices=plan.indices, format="json", shape=manifest.output_shape, **fields,
    )  # fmt: skip
    if fmt == "png" and manifest.kind == "image":
        payload.format = "png"
        texts = png_texts(model, plan, extra) if png_provenance else None
        payload.images = await offload(plan.rows, encoding.png_base64, encoding.to_uint8_nhwc(x), texts)
    else:  # json, and png requests to vector models: points are numbers
        payload.data = x.reshape(len(x), -1).astype(float).tolist()
    # pydantic's own serializer (compact, as JSONResponse's json.dumps): one pass instead of dump then dumps
    body = payload.model_dump_json(exclude_none=True).encode()
    return Response(body, media_type="application/json", headers=headers)


def png_texts(model: ReadyModel, plan: Plan, extra: dict[str, Any]) -> list[dict[str, str]]:
    """Each row's PNG text: model, version, sha256, seed, index, class; /edit adds the encoder and operation,
    /interpolate the position t on the path."""
    more: dict[str, str] = {}
    if extra.get("encoder_sha256"):
        more["encoder_sha256"] = str(extra["encoder_sha256"])
    if extra.get("edit"):
        more["edit"] = str(extra["edit"]["operation"])
    manifest = model.manifest
    labels: list[Any] = plan.labels.tolist() if plan.labels is not None else [None] * plan.rows
    ts: list[Any] = plan.t if plan.t is not None else [None] * plan.rows
    texts = []
    for index, label, t in zip(plan.indices, labels, ts, strict=True):
        name = manifest.class_names[label] if label is not None and manifest.class_names else None
        text = encoding.sample_provenance(
            model.name, model.version, manifest.onnx_sha256, index, plan.seed, label, name, **more
        )
        texts.append(text if t is None else text | {"gan:t": str(t)})
    return texts


def npz_page(x: np.ndarray, model: ReadyModel, plan: Plan) -> bytes:
    """x (uint8 NHWC images or float32 vectors), seed and index; y and class_names for conditional models."""
    assert plan.seed is not None  # a page of a set always has its seed
    arrays = {
        "x": served_array(x, model),
        "seed": np.array(plan.seed, dtype=np.uint64),
        "index": np.array(plan.indices, dtype=np.int64),
    }
    if plan.labels is not None:
        arrays |= {"y": plan.labels.astype(np.int64), "class_names": np.array(model.manifest.class_names)}
    return encoding.npz_bytes(**arrays)
