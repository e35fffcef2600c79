"""Open Inference Protocol (KServe v2) tensors, both directions, as pure functions of bytes and arrays.

A request is JSON, optionally followed by raw tensor bytes (Triton's binary tensor data extension): the
`Inference-Header-Content-Length` header says how long the JSON part is, and each input whose parameters carry
`binary_data_size` takes that many bytes of the tail, in the order of the inputs. A response is built the same
way: outputs asked for as binary carry `binary_data_size` and their bytes follow the JSON in order.

Tensor data in JSON is row-major, flat or nested to the tensor's shape; binary data is little-endian, row-major.
Nothing here knows about models: the route checks names, shapes and datatypes against the model's signature.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
# Little-endian numpy dtypes of the datatypes this module encodes and decodes (BF16 and BYTES it does not).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }.items()
}  # fmt: skip
Parameter = bool | int | float | str  # the protocol's parameter values (bool first: true is not 1)
MAX_DIMS = 8
HEADER_LENGTH = "Inference-Header-Content-Length"


class TensorError(ValueError):
    """A request the protocol cannot read: `field` says where (`inputs[0].shape`, `parameters.n`, ...)."""

    def __init__(self, detail: str, field: str = "body") -> None:
        super().__init__(detail)
        self.detail, self.field = detail, field


class TooLarge(TensorError):
    """A compressed body that inflates past the body limit."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RequestInput(_Strict):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=MAX_DIMS, description="dims, each >= 0")
    datatype: Datatype
    parameters: dict[str, Parameter] | None = Field(
        None, description="binary_data_size: the tensor's bytes follow the JSON (binary tensor extension)"
    )
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; absent when binary")


class RequestOutput(_Strict):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Parameter] | None = Field(
        None, description="binary_data: return this output as raw bytes after the JSON"
    )


class InferenceRequest(_Strict):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Parameter] | None = None
    inputs: list[RequestInput] = Field(max_length=64)
    outputs: list[RequestOutput] | None = Field(None, max_length=64)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat; absent when binary")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    outputs: list[ResponseOutput]


@dataclass(frozen=True)
class Request:
    """A read request: its JSON header, and every input's array by name."""

    header: InferenceRequest
    arrays: dict[str, np.ndarray]


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip or deflate), at most `limit` bytes once inflated."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 31, "deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        raise TensorError(f"Content-Encoding '{encoding}' is not supported: gzip, deflate or none", "body")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise TensorError(f"body is not valid {encoding} data: {error}", "body") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"request body exceeds {limit} bytes once inflated (GAN_MAX_BODY_BYTES)", "body")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail): the whole body is JSON unless `Inference-Header-Content-Length` is given."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or int(text) > len(body):
        raise TensorError(
            f"{HEADER_LENGTH} must be a byte count of at most the body's {len(body)} bytes, got '{header_length}'",
            HEADER_LENGTH,
        )
    length = int(text)
    return body[:length], memoryview(body)[length:]


def validation_message(error: ValidationError) -> tuple[str, str]:
    """(detail, field) of a request header pydantic refused: the field is the first problem's, the detail has
    that problem's message, then every other problem with its own field."""
    parts, first = [], ""
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "list[")))
        loc = "body" if item["type"] == "json_invalid" or not loc else loc
        parts.append(item["msg"] if not first else f"{loc}: {item['msg']}")
        first = first or loc
    return "; ".join(parts), first


def parse_header(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as error:
        detail, field = validation_message(error)
        raise TensorError(detail, field) from None


def element_count(shape: list[int], field: str) -> int:
    if any(d < 0 for d in shape):
        raise TensorError(f"dims must be >= 0, got {shape}", field)
    return math.prod(shape)


def dtype_of(datatype: str, field: str) -> np.dtype[Any]:
    if datatype not in NUMPY_DTYPES:
        raise TensorError(f"datatype {datatype} is not supported here: {sorted(NUMPY_DTYPES)}", field)
    return NUMPY_DTYPES[datatype]


def from_json(data: list[Any], shape: list[int], datatype: str, field: str) -> np.ndarray:
    """JSON values (flat, or nested to `shape`) as an array of `datatype` and `shape`."""
    dtype, count = dtype_of(datatype, f"{field}.datatype"), element_count(shape, f"{field}.shape")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, RecursionError, OverflowError):
        values = np.asarray([], dtype=object).reshape(0, 1)  # ragged: refused just below
    if values.ndim != 1 and list(values.shape) != list(shape):
        raise TensorError(f"data must be flat or nested to the shape {shape}", f"{field}.data")
    if values.size != count:
        raise TensorError(f"data has {values.size} values; shape {shape} needs {count}", f"{field}.data")
    kinds = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}[dtype.kind]
    if count and values.dtype.kind not in kinds:
        want = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}[dtype.kind]
        raise TensorError(f"data of a {datatype} tensor must be {want}", f"{field}.data")
    if count and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise TensorError(f"data out of range for {datatype}: {info.min} .. {info.max}", f"{field}.data")
    with np.errstate(over="ignore"):  # FP32 overflow gives inf; callers that need finite values check
        return values.astype(dtype).reshape(shape)


def from_bytes(raw: memoryview, shape: list[int], datatype: str, field: str) -> np.ndarray:
    dtype, count = dtype_of(datatype, f"{field}.datatype"), element_count(shape, f"{field}.shape")
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"binary_data_size is {len(raw)} bytes; shape {shape} of {datatype} needs {count * dtype.itemsize}",
            f"{field}.parameters.binary_data_size",
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "b" and count and array.view(np.uint8).max() > 1:
        raise TensorError("BOOL bytes must be 0 or 1", f"{field}.parameters.binary_data_size")
    return array


def decode_inputs(header: InferenceRequest, binary: memoryview) -> dict[str, np.ndarray]:
    """Every input's array: from its JSON `data`, or its `binary_data_size` bytes of the tail, in order."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(header.inputs):
        field = f"inputs[{i}]"
        if spec.name in arrays:
            raise TensorError(f"input '{spec.name}' is given twice", f"{field}.name")
        parameters = dict(spec.parameters or {})
        size = parameters.pop("binary_data_size", None)
        if parameters:
            raise TensorError(f"unknown input parameters {sorted(parameters)}: only binary_data_size", field)
        if size is None:
            if spec.data is None:
                raise TensorError("give data, or binary_data_size with the bytes after the JSON", field)
            arrays[spec.name] = from_json(spec.data, spec.shape, spec.datatype, field)
            continue
        if spec.data is not None:
            raise TensorError("give data or binary_data_size, not both", field)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TensorError("binary_data_size must be a byte count", f"{field}.parameters.binary_data_size")
        if offset + size > len(binary):
            raise TensorError(
                f"binary_data_size {size} runs past the {len(binary) - offset} bytes left after the JSON",
                f"{field}.parameters.binary_data_size",
            )
        arrays[spec.name] = from_bytes(binary[offset : offset + size], spec.shape, spec.datatype, field)
        offset += size
    if offset != len(binary):
        raise TensorError(
            f"{len(binary) - offset} bytes after the JSON belong to no input (binary_data_size)",
            HEADER_LENGTH,
        )
    return arrays


def read_request(body: bytes, header_length: str | None) -> Request:
    """A whole request body: the JSON header, validated, and the inputs decoded."""
    header, binary = split_body(body, header_length)
    parsed = parse_header(header)
    return Request(parsed, decode_inputs(parsed, binary))


@dataclass(frozen=True)
class Output:
    """One output tensor of a response, sent as JSON data or as raw bytes after the JSON."""

    name: str
    array: np.ndarray
    datatype: str
    binary: bool


def to_json(array: np.ndarray) -> list[Any]:
    """Flat row-major JSON values; floats go through float64, so every FP32 value reads back exactly."""
    flat = array.reshape(-1)
    values: list[Any] = (flat.astype(np.float64) if array.dtype.kind == "f" else flat).tolist()
    return values


def encode_response(head: dict[str, Any], outputs: list[Output]) -> tuple[bytes, int | None]:
    """(body, JSON length): the JSON header, then the binary outputs' bytes; the length is None without any."""
    tensors, tails = [], []
    for out in outputs:
        dtype = dtype_of(out.datatype, out.name)
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if out.binary:
            raw = np.ascontiguousarray(out.array, dtype=dtype).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            tensor["data"] = to_json(out.array.astype(dtype, copy=False))
        tensors.append(tensor)
    header = json.dumps(head | {"outputs": tensors}, separators=(",", ":"), allow_nan=False).encode()
    if not tails:
        return header, None
    return b"".join([header, *tails]), len(header)
