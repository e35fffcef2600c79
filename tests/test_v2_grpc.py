"""The Open Inference Protocol over gRPC (GAN_GRPC_PORT), spoken by the official client (tritonclient.grpc) to a
real server: health (the protocol's and grpc.health.v1), metadata, raw and typed tensors, the native sample
parameters, errors as statuses; and in-process (tritonclient.grpc.aio), keys, drain and backpressure."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.main import create_app
from service.settings import Settings
from tests.support import Hold, asgi_client, eventually, free_port, running_service


@pytest.fixture(scope="module")
def ports(model_dir: Path) -> Iterator[tuple[str, int]]:
    """The service with gRPC on: (its HTTP URL, its gRPC port)."""
    port = free_port()
    env = {"GAN_MODEL_DIR": str(model_dir), "GAN_MAX_N": "256", "GAN_GRPC_PORT": str(port)}
    with running_service(env) as (url, _):
        yield url, port


@pytest.fixture(scope="module")
def client(ports: tuple[str, int]) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{ports[1]}") as given:
        yield given


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


def refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def z_dim(model_dir: Path, name: str) -> int:
    dim: int = json.loads((model_dir / name / "1" / "manifest.json").read_text())["z_dim"]
    return dim


def test_health_and_metadata(
    client: triton.InferenceServerClient, ports: tuple[str, int], model_dir: Path
) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits", "1")
    assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("z", "FP32", ["-1", str(z_dim(model_dir, "digits"))]),
        ("c", "FP32", ["-1", "10"]),
    ]
    assert meta["outputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="other"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("name", "version"), [("no-such-model", ""), ("ring", "3"), ("ring", "x")])
def test_unknown_models_and_versions_are_not_found(
    client: triton.InferenceServerClient, name: str, version: str
) -> None:
    for call in (
        lambda: client.is_model_ready(name, version),
        lambda: client.get_model_metadata(name, version),
        lambda: client.infer(name, [tensor("z", np.zeros((1, 8), np.float32))], version),
    ):
        assert refusal(call).status() == "StatusCode.NOT_FOUND"


def test_tensors_and_seeded_parameters_match_http(
    client: triton.InferenceServerClient, ports: tuple[str, int], model_dir: Path
) -> None:
    """Raw tensors give what the HTTP route gives; seeded parameters give /generate's npy bytes."""
    z = np.random.default_rng(3).standard_normal((4, z_dim(model_dir, "digits"))).astype(np.float32)
    c = np.eye(10, dtype=np.float32)[[1, 1, 5, 7]]
    x = client.infer("digits", [tensor("z", z), tensor("c", c)], request_id="g1")
    over_http = http_x(ports[0], "digits", {"z": z, "c": c})
    assert x.as_numpy("x").dtype == np.float32 and x.as_numpy("x").tobytes() == over_http.tobytes()
    assert x.get_response().id == "g1" and x.get_response().model_version == "1"
    seeded = client.infer(
        "digits", [], parameters={"seed": 11, "offset": 2, "n": 5, "labels": "4", "datatype": "UINT8"}
    )
    native = httpx.post(
        f"{ports[0]}/generate",
        json={"model": "digits", "seed": 11, "offset": 2, "n": 5, "labels": 4, "format": "npy"},
    )
    assert seeded.as_numpy("x").tobytes() == np.load(io.BytesIO(native.content)).tobytes()
    parameters = seeded.get_response(as_json=True)["parameters"]
    assert parameters["seed"] == {"int64_param": "11"} and parameters["labels"] == {
        "string_param": "4,4,4,4,4"
    }


def http_x(url: str, model: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """x for these inputs through the HTTP side of the protocol."""
    inputs = []
    for name, array in arrays.items():
        given = triton_http.InferInput(name, list(array.shape), "FP32")
        given.set_data_from_numpy(array)
        inputs.append(given)
    with triton_http.InferenceServerClient(url.removeprefix("http://")) as http:
        x: np.ndarray = http.infer(model, inputs).as_numpy("x")
    return x


def test_typed_contents_read_as_raw_ones_do(ports: tuple[str, int]) -> None:
    """Inputs in `contents.fp32_contents` (not raw bytes), as other v2 clients send them."""
    z = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    request = service_pb2.ModelInferRequest(model_name="ring")
    typed = request.inputs.add(name="z", datatype="FP32", shape=[2, 8])
    typed.contents.fp32_contents.extend(z.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        wrong = service_pb2.ModelInferRequest(model_name="ring")
        wrong.inputs.add(name="z", datatype="FP32", shape=[2, 8]).contents.fp32_contents.extend([0.0] * 3)
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(wrong)
    x = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
    assert x.tobytes() == http_x(ports[0], "ring", {"z": z}).tobytes()
    assert (
        caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has 3 values" in caught.value.details()
    )


@pytest.mark.parametrize(
    ("inputs", "parameters", "words"),
    [
        ([("z", (2, 9), "FP32")], {}, "input z must have shape [-1, 8], got [2, 9]"),
        ([("z", (2, 8), "FP64")], {}, "input z must be FP32, got FP64"),
        ([], {"n": 300}, "n must be <= 256 (GAN_MAX_N)"),
        ([], {"datatype": "UINT8"}, "x is FP32 only"),
        ([], {"colour": "red"}, "unknown parameters ['colour']"),
    ],
)
def test_requests_the_model_cannot_take_are_invalid_argument(
    client: triton.InferenceServerClient,
    inputs: list[tuple[str, tuple[int, int], str]],
    parameters: dict[str, Any],
    words: str,
) -> None:
    given = [tensor(n, np.zeros(s, np.float64 if dt == "FP64" else np.float32), dt) for n, s, dt in inputs]
    error = refusal(lambda: client.infer("ring", given, parameters=parameters or None))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and words in error.message(), error.message()


def test_keys_drain_and_a_full_queue(model_dir: Path) -> None:
    key, port = "g" * 24, free_port()
    settings = Settings(
        model_dir=model_dir, api_key=key, grpc_port=port, max_queue_rows=20, max_n=20, max_steps=20,
        max_page_rows=20, max_batch_rows=8, runners=1,
    )  # fmt: skip

    async def scenario() -> dict[str, Any]:
        app = create_app(settings)
        got: dict[str, Any] = {}
        async with asgi_client(app) as http, triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
            keyed = {"authorization": f"Bearer {key}"}
            got["live without a key"] = await c.is_server_live()
            try:
                await c.infer("ring", [], parameters={"n": 1})
            except InferenceServerException as error:
                got["no key"] = error.status()
            got["keyed"] = (
                (await c.infer("ring", [], parameters={"n": 1, "seed": 2}, headers=keyed)).as_numpy("x").shape
            )
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            body = {"n": 10, "seed": 1}
            accepted = []
            for queued in (2, 12):  # 8 rows held in the model, then 2 and 12 waiting
                accepted.append(asyncio.ensure_future(c.infer("ring", [], parameters=body, headers=keyed)))
                await hold.until(entered=1, queued=queued)
            try:
                await c.infer("ring", [], parameters=body, headers=keyed)
            except InferenceServerException as error:
                got["queue full"] = (error.status(), error.message())
            hold.gate.set()
            got["accepted"] = [r.as_numpy("x").shape for r in await asyncio.gather(*accepted)]
            app.state.gan.draining = True
            try:
                await c.infer("ring", [], parameters={"n": 1}, headers=keyed)
            except InferenceServerException as error:
                got["draining"] = error.status()
            got["ready while draining"] = await c.is_server_ready()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                got["health while draining"] = check.status
            got["metrics"] = (await http.get("/metrics", headers={"X-API-Key": key})).text
        return got

    got = asyncio.run(scenario())
    assert got["live without a key"] and got["no key"] == "StatusCode.UNAUTHENTICATED"
    assert got["keyed"] == (1, 2) and got["accepted"] == [(10, 2), (10, 2)]
    assert got["queue full"][0] == "StatusCode.RESOURCE_EXHAUSTED" and "queue full" in got["queue full"][1]
    assert got["draining"] == "StatusCode.UNAVAILABLE" and got["ready while draining"] is False
    assert got["health while draining"] == health_pb2.HealthCheckResponse.NOT_SERVING
    metrics = got["metrics"]
    assert 'gan_requests_total{endpoint="grpc ModelInfer",model="ring",status="200"} 3.0' in metrics
    assert 'gan_requests_total{endpoint="grpc ModelInfer",model="ring",status="429"} 1.0' in metrics
    assert 'gan_rejections_total{model="",reason="unauthorized"} 1.0' in metrics


def test_the_response_limit_counts_raw_bytes_on_grpc(model_dir: Path) -> None:
    """100 ring points are 800 raw bytes, within a 1024-byte limit; as JSON numbers they are not."""
    port = free_port()
    settings = Settings(model_dir=model_dir, grpc_port=port, max_response_bytes=1024)
    parameters = {"n": 100, "seed": 1}

    async def scenario() -> tuple[tuple[int, ...], int, int]:
        app = create_app(settings)
        async with asgi_client(app) as http, triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
            shape = (await c.infer("ring", [], parameters=parameters)).as_numpy("x").shape
            body = {"inputs": [], "parameters": parameters}
            as_json = await http.post("/v2/models/ring/infer", json=body)
            as_binary = await http.post(
                "/v2/models/ring/infer", json=body | {"parameters": parameters | {"binary_data_output": True}}
            )
            return shape, as_json.status_code, as_binary.status_code

    assert asyncio.run(scenario()) == ((100, 2), 400, 200)


def test_an_rpc_whose_deadline_passed_is_not_computed(model_dir: Path) -> None:
    """The client's deadline ends the RPC while its rows wait behind a held batch: they are dropped."""
    port = free_port()
    settings = Settings(model_dir=model_dir, grpc_port=port, max_batch_rows=4, runners=1)

    async def scenario() -> tuple[str, float, int]:
        app = create_app(settings)
        async with asgi_client(app) as http, triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            busy = asyncio.ensure_future(http.post("/generate", json={"model": "ring", "n": 4}))
            await hold.until(entered=1, queued=0)
            late = asyncio.ensure_future(c.infer("ring", [], parameters={"n": 3}, client_timeout=0.5))
            await hold.until(entered=1, queued=3)
            try:
                await late
                status = "OK"
            except InferenceServerException as error:
                status = str(error.status())
            metrics = app.state.gan.metrics
            ended = metrics.requests.labels("grpc ModelInfer", "", "499")
            await eventually(lambda: ended._value.get() == 1, what="the server to see the RPC end")
            hold.gate.set()
            assert (await busy).status_code == 200
            # the batcher drops the dropped rows when it next collects; had they been kept, it would run them
            await eventually(lambda: hold.batcher.queued_rows == 0, what="the queue to empty")
            await asyncio.sleep(0.2)
            return status, metrics.batch_rows.labels("ring")._sum.get(), hold.entered

    status, computed, batches = asyncio.run(scenario())
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert computed == 4 and batches == 1  # the busy batch only: nothing of the RPC
