"""How an Open Inference Protocol inference request becomes a plan, shared by HTTP (`v2`) and gRPC (`grpc_v2`).

A request either carries the generator's inputs as tensors (`z` [N, z_dim] FP32, and `c` [N, num_classes] FP32
for conditional models), or no inputs and the native API's sample parameters (`seed`, `offset`, `n`, `labels`,
`truncation`): those are planned by `service.plans.generate_plan`, so they give the very samples `/generate`
gives. The output parameters choose `x`'s datatype (FP32, or UINT8 for images) and whether it goes as binary;
the size that makes is checked against GAN_MAX_RESPONSE_BYTES before anything is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service import encoding, plans
from service.manifest import Manifest
from service.offload import offload
from service.protocols import v2_tensors
from service.protocols.v2_tensors import InferenceRequest, Parameter, TensorError
from service.schemas import GenerateRequest
from service.settings import Settings
from service.versions import ReadyModel

SAMPLE_PARAMETERS = ("seed", "offset", "n", "labels", "truncation")  # the native API's, for /generate's plan
OUTPUT_PARAMETERS = ("binary_data_output", "datatype")
MAX_ABS_INPUT = 1e4  # as /interpolate's explicit z
# Bytes one output value costs: raw FP32 or UINT8, or JSON text (as service.plans counts JSON numbers).
VALUE_BYTES = {("FP32", True): 4, ("UINT8", True): 1, ("FP32", False): 24, ("UINT8", False): 4}


def output_choice(header: InferenceRequest, manifest: Manifest) -> tuple[str, bool]:
    """(datatype of x, whether it goes as binary): request parameters, overridden by the output's own."""
    params = header.parameters or {}
    datatype, binary = params.get("datatype", "FP32"), params.get("binary_data_output", False)
    field = "parameters"
    seen: set[str] = set()
    for i, out in enumerate(header.outputs or []):
        field = f"outputs[{i}]"
        if out.name != "x":
            raise TensorError(f"model {manifest.name} has one output, 'x'; got '{out.name}'", f"{field}.name")
        if out.name in seen:
            raise TensorError("output 'x' is asked for twice", f"{field}.name")
        seen.add(out.name)
        own = out.parameters or {}
        unknown = sorted(set(own) - {"binary_data", "datatype"})
        if unknown:
            raise TensorError(
                f"unknown output parameters {unknown}: binary_data, datatype", f"{field}.parameters"
            )
        datatype, binary = own.get("datatype", datatype), own.get("binary_data", binary)
    if not isinstance(binary, bool):
        raise TensorError("binary_data and binary_data_output must be true or false", field)
    if datatype not in ("FP32", "UINT8"):
        raise TensorError(f"datatype of x must be FP32 or UINT8, got {datatype!r}", f"{field}.datatype")
    if datatype == "UINT8" and manifest.kind != "image":
        raise TensorError(f"model {manifest.name} outputs vectors: x is FP32 only", f"{field}.datatype")
    return str(datatype), binary


def check_parameters(header: InferenceRequest) -> dict[str, Parameter]:
    """The request's sample parameters, after refusing unknown ones and mixing them with input tensors."""
    params = header.parameters or {}
    unknown = sorted(set(params) - set(SAMPLE_PARAMETERS) - set(OUTPUT_PARAMETERS))
    if unknown:
        known = [*SAMPLE_PARAMETERS, *OUTPUT_PARAMETERS]
        raise TensorError(f"unknown parameters {unknown}; this server reads {known}", "parameters")
    sample = {k: v for k, v in params.items() if k in SAMPLE_PARAMETERS}
    if sample and header.inputs:
        raise TensorError(
            f"parameters {sorted(sample)} choose the samples: give them with no inputs, or give z (and c) only",
            "parameters",
        )
    return sample


def generate_request(name: str, version: int, sample: dict[str, Parameter]) -> GenerateRequest:
    """The native request the parameters stand for: labels may list classes as "3,1,Dress"."""
    fields: dict[str, Any] = dict(sample)
    labels = fields.get("labels")
    if isinstance(labels, str) and "," in labels:
        fields["labels"] = [part.strip() for part in labels.split(",")]
    try:
        return GenerateRequest.model_validate({"model": name, "version": version, "format": "npy", **fields})
    except ValidationError as error:
        item = error.errors()[0]
        loc = ".".join(str(p) for p in item["loc"][:1])
        raise TensorError(item["msg"], f"parameters.{loc}") from None


def tensor_plan(request: v2_tensors.Request, manifest: Manifest, settings: Settings) -> plans.Plan:
    """Feeds from explicit tensors: z [N, z_dim] FP32, and c [N, num_classes] FP32 for conditional models."""
    widths = {"z": manifest.z_dim} | ({"c": manifest.num_classes} if manifest.num_classes else {})
    names = [spec.name for spec in request.header.inputs]
    unknown, missing = sorted(set(names) - set(widths)), [n for n in widths if n not in names]
    if unknown or missing:
        raise TensorError(
            f"model {manifest.name} takes inputs {list(widths)}; "
            + (f"unknown: {unknown}" if unknown else f"missing: {missing}"),
            "inputs",
        )
    feeds, rows = {}, None
    for i, spec in enumerate(request.header.inputs):
        field, width = f"inputs[{i}]", widths[spec.name]
        if spec.datatype != "FP32":
            raise TensorError(f"input {spec.name} must be FP32, got {spec.datatype}", f"{field}.datatype")
        array = request.arrays[spec.name]
        if array.ndim != 2 or array.shape[1] != width:
            raise TensorError(
                f"input {spec.name} must have shape [-1, {width}], got {spec.shape}", f"{field}.shape"
            )
        if rows is not None and array.shape[0] != rows:
            raise TensorError(
                f"inputs have {rows} and {array.shape[0]} rows: they must agree", f"{field}.shape"
            )
        rows = array.shape[0]
        if not np.isfinite(array).all() or (array.size and np.abs(array).max() > MAX_ABS_INPUT):
            raise TensorError(f"{spec.name} must be finite numbers with |value| <= 10000", f"{field}.data")
        feeds[spec.name] = np.array(array, dtype=np.float32)  # a copy: binary inputs view the request body
    assert rows is not None  # z is always among the inputs
    if rows == 0:
        raise TensorError("inputs need at least 1 row", "inputs[0].shape")
    if rows > settings.max_n:
        raise TensorError(f"inputs have {rows} rows; at most {settings.max_n} (GAN_MAX_N)", "inputs[0].shape")
    return plans.Plan(feeds, None, list(range(rows)))


def check_output_size(
    rows: int, manifest: Manifest, datatype: str, binary: bool, settings: Settings, field: str
) -> None:
    size = rows * int(np.prod(manifest.output_shape)) * VALUE_BYTES[datatype, binary]
    if size > settings.max_response_bytes:
        raise plans.PlanError(
            f"{rows} rows of {manifest.name} as {datatype} {'binary' if binary else 'JSON'} would be about "
            f"{size} bytes; at most {settings.max_response_bytes} (GAN_MAX_RESPONSE_BYTES): ask for fewer rows "
            "or binary data",
            field,
        )


def response_parameters(
    model: ReadyModel, plan: plans.Plan, truncation: float | None
) -> dict[str, Parameter]:
    """Provenance (as the native X-* headers carry it), and the seed, offset, truncation and labels of seeded
    samples."""
    params: dict[str, Parameter] = {"onnx_sha256": model.manifest.onnx_sha256, "provider": model.provider}
    if plan.seed is not None:
        params |= {"seed": plan.seed, "offset": plan.indices[0] if plan.indices else 0}
    if truncation is not None:
        params["truncation"] = truncation
    if plan.seed is not None and plan.labels is not None:
        params["labels"] = ",".join(str(int(v)) for v in plan.labels)
    return params


@dataclass(frozen=True)
class Planned:
    """What an inference request computes (the plan) and how its `x` goes back."""

    plan: plans.Plan
    datatype: str  # FP32 or UINT8
    binary: bool
    truncation: float | None = None


async def plan_inference(
    parsed: v2_tensors.Request, model: ReadyModel, settings: Settings, raw: bool = False
) -> Planned:
    """The rows a read request asks for: its tensors, or the native plan of its sample parameters.

    `raw`: x always goes back as raw bytes (gRPC), whatever the binary-data parameters say."""
    manifest = model.manifest
    datatype, binary = output_choice(parsed.header, manifest)
    binary = binary or raw
    sample = check_parameters(parsed.header)
    if parsed.header.inputs:
        plan = tensor_plan(parsed, manifest, settings)
        check_output_size(plan.rows, manifest, datatype, binary, settings, "inputs")
        return Planned(plan, datatype, binary)
    native = generate_request(model.name, model.version, sample)
    seed = plans.chosen_seed(native.seed)
    try:
        plans.check_limit(native.n, settings.max_n, "n", "GAN_MAX_N")
        check_output_size(native.n, manifest, datatype, binary, settings, "n")
        plan = await offload(native.n, plans.generate_plan, native, manifest, settings, seed)
    except plans.PlanError as error:  # its fields are the parameters'
        raise TensorError(error.detail, f"parameters.{error.field}") from None
    return Planned(plan, datatype, binary, native.truncation)


def served_x(x: np.ndarray, datatype: str) -> np.ndarray:
    """FP32 in the graph's layout, or UINT8 NHWC images (the bytes of /generate's npy)."""
    return encoding.to_uint8_nhwc(x) if datatype == "UINT8" else x.astype(np.float32, copy=False)
