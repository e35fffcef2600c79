"""Open Inference Protocol tensors (service.protocols.v2_tensors): JSON and binary, both directions, checked
against the official client's own encoder and decoder (tritonclient.http) and against bad input."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from service.protocols import v2_tensors as v2
from service.protocols.v2_tensors import TensorError


def client_body(*inputs: triton.InferInput, **parameters: object) -> tuple[bytes, str | None]:
    """What tritonclient sends for these inputs: the body and its Inference-Header-Content-Length."""
    body, json_size = _get_inference_request(
        inputs=list(inputs), request_id="r1", outputs=None, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=parameters or None,
    )  # fmt: skip
    return body, None if json_size is None else str(json_size)


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


ARRAYS = {
    "FP32": np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 7,
    "FP64": np.linspace(-1e300, 1e300, 6).reshape(2, 3),
    "FP16": np.array([[0.5, -2.25]], dtype=np.float16),
    "INT64": np.array([[-(2**62), 2**62]], dtype=np.int64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "UINT8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "UINT64": np.array([2**64 - 1], dtype=np.uint64),
    "BOOL": np.array([[True, False, True]]),
}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_inputs_read_back_exactly_as_the_client_sent_them(datatype: str, binary: bool) -> None:
    array = ARRAYS[datatype]
    body, length = client_body(tensor("a", array, datatype, binary), seed=3)
    request = v2.read_request(body, length)
    assert request.header.id == "r1" and request.header.parameters == {"binary_data_output": True, "seed": 3}
    got = request.arrays["a"]
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)


def test_several_binary_and_json_inputs_take_their_own_bytes_in_order() -> None:
    a, b, c = np.ones((2, 3), np.float32), np.arange(4, dtype=np.int32), np.full((1, 2), 7.5, np.float32)
    body, length = client_body(
        tensor("a", a, "FP32", True), tensor("b", b, "INT32", False), tensor("c", c, "FP32", True)
    )
    arrays = v2.read_request(body, length).arrays
    assert [np.array_equal(arrays[k], v) for k, v in (("a", a), ("b", b), ("c", c))] == [True] * 3


def test_json_data_may_be_nested_to_the_shape() -> None:
    header = {"inputs": [{"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3.5, 4]]}]}
    z = v2.read_request(json.dumps(header).encode(), None).arrays["z"]
    assert z.dtype == np.float32 and z.tolist() == [[1, 2], [3.5, 4]]


def bad(inputs: list[dict[str, object]], tail: bytes = b"", **header: object) -> TensorError:
    text = json.dumps({"inputs": inputs} | header).encode()
    with pytest.raises(TensorError) as caught:
        v2.read_request(text + tail, str(len(text)) if tail else None)
    return caught.value


def z_input(**fields: object) -> dict[str, object]:
    return {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]} | fields


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        ([z_input(data=[1.0])], "inputs[0].data", "has 1 values; shape [1, 2] needs 2"),
        ([z_input(data=[[1.0], [2.0]])], "inputs[0].data", "flat or nested"),
        ([z_input(data=[[1.0, 2.0], [3.0]])], "inputs[0].data", "flat or nested"),  # ragged
        ([z_input(data=["a", "b"])], "inputs[0].data", "must be numbers"),
        ([z_input(data=[True, False])], "inputs[0].data", "must be numbers"),
        ([z_input(datatype="INT8", data=[1, 300])], "inputs[0].data", "out of range"),
        ([z_input(datatype="INT32", data=[1.5, 2])], "inputs[0].data", "must be integers"),
        ([z_input(shape=[-1, 2])], "inputs[0].shape", "dims must be >= 0"),
        ([z_input(datatype="FP8")], "inputs.0.datatype", "Input should be"),
        ([z_input(datatype="BYTES", data=["a", "b"])], "inputs[0].datatype", "not supported"),
        ([z_input(data=None)], "inputs[0]", "give data, or binary_data_size"),
        ([z_input(parameters={"shared_memory_region": "r"})], "inputs[0]", "unknown input parameters"),
        ([z_input(), z_input()], "inputs[1].name", "given twice"),
        ([z_input(extra=1)], "inputs.0.extra", "Extra inputs"),
        ([z_input(shape=[1, 2.5])], "inputs.0.shape.1", "valid integer"),
    ],
)
def test_unreadable_json_tensors_are_refused_naming_the_field(
    inputs: list[dict[str, object]], field: str, words: str
) -> None:
    error = bad(inputs)
    assert error.field == field and words in error.detail, (error.field, error.detail)


def test_binary_sizes_must_match_the_shape_and_the_tail() -> None:
    raw = np.zeros(2, np.float32).tobytes()
    binary = z_input(data=None, parameters={"binary_data_size": 8})
    assert v2.read_request(*with_tail(binary, raw)).arrays["z"].tolist() == [[0.0, 0.0]]
    error = bad([binary], raw[:4])
    assert "runs past the 4 bytes" in error.detail and error.field == "inputs[0].parameters.binary_data_size"
    error = bad([binary], raw + b"xx")
    assert "2 bytes after the JSON belong to no input" in error.detail
    error = bad([z_input(data=None, parameters={"binary_data_size": 4})], raw[:4])
    assert "needs 8" in error.detail
    error = bad([z_input(parameters={"binary_data_size": 8})], raw)
    assert "not both" in error.detail
    error = bad([z_input(data=None, parameters={"binary_data_size": True})], raw)
    assert "must be a byte count" in error.detail
    flags = {"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}
    assert "0 or 1" in bad([flags], b"\x01\x02").detail


def with_tail(spec: dict[str, object], tail: bytes) -> tuple[bytes, str]:
    text = json.dumps({"inputs": [spec]}).encode()
    return text + tail, str(len(text))


@pytest.mark.parametrize("length", ["-1", "x", "1e3", "99999", "٣"])
def test_the_header_length_must_be_a_count_within_the_body(length: str) -> None:
    with pytest.raises(TensorError) as caught:
        v2.read_request(b'{"inputs": []}', length)
    assert caught.value.field == v2.HEADER_LENGTH


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(TensorError) as caught:
        v2.read_request(b"\x00\xff not json", None)
    assert caught.value.field == "body" and "Invalid JSON" in caught.value.detail


def test_compressed_bodies_inflate_within_the_limit() -> None:
    body = json.dumps({"inputs": [z_input()]}).encode()
    assert v2.inflate(gzip.compress(body), "gzip", 1024) == body
    assert v2.inflate(zlib.compress(body), "deflate", 1024) == body
    assert v2.inflate(body, None, 1024) == body
    with pytest.raises(v2.TooLarge):
        v2.inflate(gzip.compress(b" " * 10_000), "gzip", 1024)
    with pytest.raises(TensorError, match="not supported"):
        v2.inflate(body, "br", 1024)
    with pytest.raises(TensorError, match="not valid gzip"):
        v2.inflate(body, "gzip", 1024)


@pytest.mark.parametrize("binary", [False, True])
def test_responses_decode_with_the_clients_own_result_reader(binary: bool) -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 2, 2)).astype(np.float32)
    images = np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1)
    head = {"model_name": "m", "model_version": "2", "parameters": {"seed": 5}}
    body, length = v2.encode_response(
        head, [v2.Output("x", x, "FP32", binary), v2.Output("u", images, "UINT8", binary)]
    )
    assert (length is not None) == binary
    result = triton.InferResult.from_response_body(body, header_length=length)
    assert result.get_response()["parameters"] == {"seed": 5}
    got = result.as_numpy("x")
    assert got.dtype == np.float32 and got.tobytes() == x.tobytes()  # JSON numbers read back bit-exactly
    assert np.array_equal(result.as_numpy("u"), images)
