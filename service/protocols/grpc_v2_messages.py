"""The KServe v2 protobuf messages (as tritonclient ships them) read into and written from the HTTP route's terms.

A ModelInferRequest becomes the same `v2_tensors.Request` the HTTP route reads, its header validated the same
way: inputs typed (`contents`, in the field `CONTENTS` names for their datatype) or raw (`raw_input_contents`,
little-endian). The ModelInferResponse carries `x` raw (`raw_output_contents`), as tritonclient reads it, and the
response parameters as typed InferParameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from service.protocols.v2_tensors import (
    InferenceRequest,
    Parameter,
    TensorError,
    from_bytes,
    from_json,
    validation_message,
)
from service.protocols.v2_tensors import Request as TensorRequest
from service.versions import ReadyModel

# Which typed `contents` field carries each datatype (FP16 and BF16 travel raw only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def parameter_value(parameter: Any, field: str) -> Parameter:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise TensorError("a parameter without a value", field)
    value: Parameter = getattr(parameter, which)
    return value


def to_parameter(value: Parameter) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


def parameters_of(given: Any, field: str) -> dict[str, Parameter] | None:
    if not given:
        return None
    return {key: parameter_value(value, f"{field}.{key}") for key, value in given.items()}


def read_infer_request(request: Any) -> TensorRequest:
    """A ModelInferRequest as the HTTP route's `v2_tensors.Request`: the header validated the same way."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per input",
            "raw_input_contents",
        )
    fields: dict[str, Any] = {
        "id": request.id or None,
        "parameters": parameters_of(request.parameters, "parameters"),
        "inputs": [
            {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
            | ({"parameters": parameters_of(t.parameters, f"inputs[{i}].parameters")} if t.parameters else {})
            for i, t in enumerate(request.inputs)
        ],
        "outputs": [
            {"name": t.name}
            | (
                {"parameters": parameters_of(t.parameters, f"outputs[{i}].parameters")}
                if t.parameters
                else {}
            )
            for i, t in enumerate(request.outputs)
        ]
        or None,
    }
    try:
        header = InferenceRequest.model_validate(fields)
    except ValidationError as error:
        detail, field = validation_message(error)
        raise TensorError(detail, field) from None
    arrays = {}
    for i, spec in enumerate(header.inputs):
        field = f"inputs[{i}]"
        if spec.name in arrays:
            raise TensorError(f"input '{spec.name}' is given twice", f"{field}.name")
        if spec.parameters:
            raise TensorError(f"unknown input parameters {sorted(spec.parameters)}", f"{field}.parameters")
        if raw:
            arrays[spec.name] = from_bytes(memoryview(raw[i]), spec.shape, spec.datatype, field)
        else:
            contents = getattr(request.inputs[i].contents, CONTENTS.get(spec.datatype, "bytes_contents"))
            values = list(contents) if spec.datatype in CONTENTS else []
            arrays[spec.name] = from_json(values, spec.shape, spec.datatype, f"{field}.contents")
    return TensorRequest(header, arrays)


def infer_response(
    model: ReadyModel, request_id: str | None, x: np.ndarray, datatype: str, parameters: dict[str, Parameter]
) -> Any:
    """A ModelInferResponse: `x` (as served) raw, with the response parameters."""
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=request_id or "",
        parameters={key: to_parameter(value) for key, value in parameters.items()},
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="x", datatype=datatype, shape=list(x.shape))],
        raw_output_contents=[x.tobytes()],
    )
