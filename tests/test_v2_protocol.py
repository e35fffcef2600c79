"""The Open Inference Protocol (KServe v2) over HTTP, spoken by the official client (tritonclient.http) to a real
uvicorn server: health, metadata, JSON and binary tensors, the native sample parameters, errors; and in-process,
what the native routes share with it: keys, drain, body limit, backpressure, metrics."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.gate import endpoint_label
from service.main import create_app
from service.settings import Settings
from tests.support import Hold, asgi_client, past_deadline, running_service


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    """The service on a free port with `digits` (conditional 8x8 images) and `ring` (2-D points): its URL."""
    with running_service({"GAN_MODEL_DIR": str(model_dir), "GAN_MAX_N": "256"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.removeprefix("http://")) as given:
        yield given


def manifest(model_dir: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((model_dir / name / "1" / "manifest.json").read_text())
    return loaded


def tensor(name: str, array: np.ndarray, binary: bool = True, datatype: str = "FP32") -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    array: np.ndarray = np.load(io.BytesIO(response.content), allow_pickle=False)
    return array


def test_server_and_model_health_and_metadata(client: triton.InferenceServerClient, model_dir: Path) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("ring", "1")
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready("ring", "2")
    server = client.get_server_metadata()
    assert server["name"] == "gan-serving" and "binary_tensor_data" in server["extensions"]
    digits = manifest(model_dir, "digits")
    assert client.get_model_metadata("digits") == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "z", "datatype": "FP32", "shape": [-1, digits["z_dim"]]},
            {"name": "c", "datatype": "FP32", "shape": [-1, 10]},
        ],
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
    }
    ring = client.get_model_metadata("ring", "1")
    assert [i["name"] for i in ring["inputs"]] == ["z"] and ring["outputs"][0]["shape"] == [-1, 2]


@pytest.mark.parametrize(
    ("name", "version", "words"),
    [("no-such-model", "", "not found"), ("ring", "7", "no version 7"), ("ring", "one", "no version 'one'")],
)
def test_unknown_models_and_versions_are_404(
    client: triton.InferenceServerClient, name: str, version: str, words: str
) -> None:
    z = tensor("z", np.zeros((1, 8), np.float32))
    for call in (lambda: client.get_model_metadata(name, version), lambda: client.infer(name, [z], version)):
        error = refusal(call)
        assert error.status() == "404" and words in error.message(), error


def graph_output(model_dir: Path, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_dir / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (x,) = session.run(["x"], feeds)
    return np.asarray(x)


@pytest.mark.parametrize("binary", [False, True])
def test_explicit_tensors_json_or_binary_give_the_graphs_output(
    client: triton.InferenceServerClient, model_dir: Path, binary: bool
) -> None:
    z_dim = manifest(model_dir, "digits")["z_dim"]
    z = np.random.default_rng(1).standard_normal((5, z_dim)).astype(np.float32)
    c = np.eye(10, dtype=np.float32)[[0, 3, 3, 9, 1]]
    wanted = [triton.InferRequestedOutput("x", binary_data=binary)]
    result = client.infer(
        "digits", [tensor("z", z, binary), tensor("c", c, binary)], outputs=wanted, request_id="q7"
    )
    x = result.as_numpy("x")
    assert x.dtype == np.float32 and x.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(x, graph_output(model_dir, "digits", {"z": z, "c": c}), rtol=0, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "digits" and response["model_version"] == "1" and response["id"] == "q7"
    assert ("binary_data_size" in (response["outputs"][0].get("parameters") or {})) == binary
    assert response["parameters"]["onnx_sha256"] == manifest(model_dir, "digits")["onnx_sha256"]


def test_json_and_binary_answers_carry_the_same_bytes(client: triton.InferenceServerClient) -> None:
    z = np.linspace(-2, 2, 3 * 8, dtype=np.float32).reshape(3, 8)
    answers = [
        client.infer(
            "ring", [tensor("z", z, binary)], outputs=[triton.InferRequestedOutput("x", binary_data=out)]
        )
        for binary in (False, True)
        for out in (False, True)
    ]
    first = answers[0].as_numpy("x")
    assert first.shape == (3, 2) and all(a.as_numpy("x").tobytes() == first.tobytes() for a in answers)


def test_seeded_parameters_give_generates_samples(client: triton.InferenceServerClient, server: str) -> None:
    """The same seed, offset and n through v2 and through /generate: the same bytes (vectors: float32)."""
    asked = {"seed": 42, "offset": 3, "n": 6, "truncation": 1.5}
    result = client.infer("ring", [], parameters=asked)
    native = npy(httpx.post(f"{server}/generate", json={"model": "ring", "format": "npy"} | asked))
    x = result.as_numpy("x")
    assert x.dtype == native.dtype == np.float32 and x.tobytes() == native.tobytes()
    returned = result.get_response()["parameters"]
    assert returned["seed"] == 42 and returned["offset"] == 3 and returned["truncation"] == 1.5
    # batch-invariant: samples 5 and 6 of seed 42 are the same in any request
    part = client.infer("ring", [], parameters={"seed": 42, "offset": 5, "n": 2, "truncation": 1.5})
    assert part.as_numpy("x").tobytes() == x[2:4].tobytes()


def test_conditional_samples_uint8_match_generates_npy(
    client: triton.InferenceServerClient, server: str
) -> None:
    """UINT8 x is NHWC, as /generate's npy: the same bytes, with labels for all, per sample, or cycling."""
    for labels in (3, "7", "1,2,0", None):
        asked: dict[str, Any] = {"seed": 9, "n": 3} | ({"labels": labels} if labels is not None else {})
        result = client.infer("digits", [], parameters=asked | {"datatype": "UINT8"})
        native_labels = labels.split(",") if isinstance(labels, str) and "," in labels else labels
        native = npy(
            httpx.post(
                f"{server}/generate",
                json={"model": "digits", "format": "npy", "seed": 9, "n": 3}
                | ({"labels": native_labels} if labels is not None else {}),
            )
        )
        x = result.as_numpy("x")
        assert x.dtype == np.uint8 and x.shape == (3, 8, 8, 1) and x.tobytes() == native.tobytes(), labels
    assert result.get_response()["parameters"]["labels"] == "0,1,2"  # the default: classes in turn
    # FP32 keeps the graph's NCHW layout: the same samples as /generate's JSON numbers
    fp32 = client.infer("digits", [], parameters={"seed": 9, "n": 3, "labels": 3}).as_numpy("x")
    data = httpx.post(
        f"{server}/generate", json={"model": "digits", "seed": 9, "n": 3, "labels": 3, "format": "json"}
    )
    assert fp32.shape == (3, 1, 8, 8) and np.array_equal(
        fp32.reshape(3, -1), np.array(data.json()["data"], np.float32)
    )


def test_a_server_chosen_seed_is_returned(client: triton.InferenceServerClient) -> None:
    result = client.infer("ring", [], parameters={"n": 2})
    seed = result.get_response()["parameters"]["seed"]
    again = client.infer("ring", [], parameters={"n": 2, "seed": seed})
    assert again.as_numpy("x").tobytes() == result.as_numpy("x").tobytes()


@pytest.mark.parametrize(
    ("inputs", "parameters", "words"),
    [
        ([("z", (2, 9), "FP32")], {}, "inputs[0].shape: input z must have shape [-1, 8], got [2, 9]"),
        ([("z", (2, 8), "FP64")], {}, "inputs[0].datatype: input z must be FP32, got FP64"),
        ([("z", (2, 8), "FP32"), ("c", (2, 10), "FP32")], {}, "takes inputs ['z']; unknown: ['c']"),
        ([("z", (2, 8), "FP32")], {"seed": 1}, "choose the samples"),
        ([], {"n": 0}, "parameters.n: Input should be greater than or equal to 1"),
        ([], {"n": 257}, "parameters.n: n must be <= 256 (GAN_MAX_N)"),
        ([], {"labels": 3}, "parameters.labels: model ring is unconditional"),
        ([], {"datatype": "UINT8"}, "outputs vectors: x is FP32 only"),
        ([], {"colour": "red"}, "unknown parameters ['colour']"),
    ],
)
def test_requests_the_model_cannot_take_are_400(
    client: triton.InferenceServerClient,
    inputs: list[tuple[str, tuple[int, int], str]],
    parameters: dict[str, Any],
    words: str,
) -> None:
    given = [
        tensor(name, np.zeros(shape, np.float64 if dt == "FP64" else np.float32), datatype=dt)
        for name, shape, dt in inputs
    ]
    error = refusal(lambda: client.infer("ring", given, parameters=parameters or None))
    assert error.status() == "400" and words in error.message(), error.message()


def test_conditional_models_need_c_and_labels_in_range(client: triton.InferenceServerClient) -> None:
    z = tensor("z", np.zeros((1, 16), np.float32))
    error = refusal(lambda: client.infer("digits", [z]))
    assert error.status() == "400" and "missing: ['c']" in error.message()
    error = refusal(lambda: client.infer("digits", [], parameters={"labels": 12}))
    assert error.status() == "400" and "label 12 out of range" in error.message()


def test_raw_http_errors_are_in_the_protocols_shape(server: str) -> None:
    not_json = httpx.post(f"{server}/v2/models/ring/infer", content=b"\x00not json")
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("body: Invalid JSON")
    nan = httpx.post(
        f"{server}/v2/models/ring/infer",
        content=b'{"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [NaN,0,0,0,0,0,0,0]}]}',
    )
    assert nan.status_code == 400 and "error" in nan.json()
    assert httpx.get(f"{server}/v2/nowhere").json() == {"error": "Not Found"}
    assert httpx.put(f"{server}/v2").status_code == 405


def app_settings(model_dir: Path, **settings: Any) -> Settings:
    return Settings(model_dir=model_dir, **settings)


def test_keys_drain_and_body_limit_answer_in_the_protocols_shape(model_dir: Path) -> None:
    key = "k" * 20

    async def scenario() -> dict[str, httpx.Response]:
        app = create_app(app_settings(model_dir, api_key=key, max_body_bytes=1024))
        body = {"inputs": [], "parameters": {"n": 1, "seed": 1}}
        async with asgi_client(app) as c:
            got = {
                "no key": await c.post("/v2/models/ring/infer", json=body),
                "keyed": await c.post("/v2/models/ring/infer", json=body, headers={"X-API-Key": key}),
                "live": await c.get("/v2/health/live"),
                "too large": await c.post(
                    "/v2/models/ring/infer", content=b" " * 2000, headers={"X-API-Key": key}
                ),
            }
            app.state.gan.draining = True
            got["draining"] = await c.post("/v2/models/ring/infer", json=body, headers={"X-API-Key": key})
            got["ready while draining"] = await c.get("/v2/health/ready")
            got["live while draining"] = await c.get("/v2/health/live")
            got["metrics"] = await c.get("/metrics", headers={"X-API-Key": key})
            return got

    got = asyncio.run(scenario())
    assert got["no key"].status_code == 401 and "API key" in got["no key"].json()["error"]
    assert got["keyed"].status_code == 200 and got["live"].json() == {"live": True}
    assert got["too large"].status_code == 413 and "GAN_MAX_BODY_BYTES" in got["too large"].json()["error"]
    assert got["draining"].status_code == 503 and got["draining"].headers["retry-after"] == "1"
    assert "draining" in got["draining"].json()["error"]
    assert got["ready while draining"].status_code == 503 and got["live while draining"].status_code == 200
    metrics = got["metrics"].text
    assert 'gan_requests_total{endpoint="/v2/models/{name}/infer",model="ring",status="200"} 1.0' in metrics
    assert 'gan_rejections_total{model="",reason="unauthorized"} 1.0' in metrics
    assert 'gan_samples_generated_total{model="ring"} 1.0' in metrics


def test_a_full_queue_is_429_with_retry_after(model_dir: Path) -> None:
    settings = app_settings(
        model_dir, max_queue_rows=20, max_n=20, max_steps=20, max_page_rows=20, max_batch_rows=8, runners=1
    )

    async def scenario() -> tuple[list[int], httpx.Response]:
        app = create_app(settings)
        async with asgi_client(app) as c:
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            body = {"inputs": [], "parameters": {"n": 10, "seed": 1}}
            accepted = []
            for queued in (2, 12):  # 8 rows held in the model, then 2 and 12 waiting
                accepted.append(asyncio.ensure_future(c.post("/v2/models/ring/infer", json=body)))
                await hold.until(entered=1, queued=queued)
            refused = await c.post("/v2/models/ring/infer", json=body)  # 12 + 10 > 20
            hold.gate.set()
            return [r.status_code for r in await asyncio.gather(*accepted)], refused

    statuses, refused = asyncio.run(scenario())
    assert statuses == [200, 200]
    assert (
        refused.status_code == 429
        and "queue full" in refused.json()["error"]
        and "retry-after" in refused.headers
    )


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v2", "/v2"),
        ("/v2/health/ready", "/v2/health/ready"),
        ("/v2/models/digits", "/v2/models/{name}"),
        ("/v2/models/any-name/ready", "/v2/models/{name}/ready"),
        ("/v2/models/x/versions/3/infer", "/v2/models/{name}/versions/{version}/infer"),
        ("/v2/models/x/versions/3", "/v2/models/{name}/versions/{version}"),
        ("/v2/models/x/versions/3/stats", "other"),
        ("/v2/repository/index", "/v2/repository/index"),
        ("/v2/repository/models/x/load", "/v2/repository/models/{name}/load"),
        ("/v2/repository/models/x/unload", "/v2/repository/models/{name}/unload"),
        ("/v2/repository/models/x/reload", "other"),
    ],
)
def test_v2_paths_are_bounded_metric_labels(path: str, label: str) -> None:
    assert endpoint_label(path) == label


def test_a_request_past_its_deadline_is_504(model_dir: Path) -> None:
    settings = app_settings(model_dir, request_timeout_s=0.5, max_batch_rows=4, runners=1)
    path = "/v2/models/ring/infer"
    first, late = past_deadline(
        settings, path, {"inputs": [], "parameters": {"n": 4}}, {"inputs": [], "parameters": {"n": 1}}
    )
    assert first.status_code == 200
    assert late.status_code == 504 and "GAN_REQUEST_TIMEOUT_S" in late.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_inflated(client: triton.InferenceServerClient, algorithm: str) -> None:
    z = np.full((2, 8), 0.25, np.float32)
    plain = client.infer("ring", [tensor("z", z)]).as_numpy("x")
    packed = client.infer("ring", [tensor("z", z)], request_compression_algorithm=algorithm).as_numpy("x")
    assert packed.tobytes() == plain.tobytes()
