from __future__ import annotations

import asyncio
import base64
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from service.settings import Settings
from tests.support import Hold, asgi_client, past_deadline, session_provider

SETTINGS = {"max_n": 256}


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=model_dir, **SETTINGS))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def provider(model_dir: Path) -> str:
    """What ONNX Runtime runs the `digits` graph on under the client's device policy: CPU, or CUDA on a GPU."""
    return session_provider(model_dir / "digits" / "1" / "model.onnx", Settings(**SETTINGS).device)


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    array: np.ndarray = np.load(io.BytesIO(response.content), allow_pickle=False)
    return array


# --- /generate ---


def test_generate_png_with_provenance(client: TestClient, provider: str) -> None:
    response = client.post("/generate", json={"model": "digits", "n": 3, "seed": 11, "labels": "7"})
    body = response.json()
    assert response.status_code == 200 and body["format"] == "png"
    assert (body["model"], body["version"], body["seed"], body["indices"]) == ("digits", 1, 11, [0, 1, 2])
    assert (
        body["onnx_sha256"] == client.get("/models/digits").json()["versions"][0]["manifest"]["onnx_sha256"]
    )
    assert body["labels"] == [7, 7, 7] and body["shape"] == [1, 8, 8]
    assert body["provider"] == provider

    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        assert image.size == (8, 8) and image.mode == "L"


def test_generate_npy_is_uint8_nhwc_with_headers(client: TestClient) -> None:
    response = client.post("/generate", json={"model": "digits", "n": 4, "seed": 5, "format": "npy"})
    x = npy(response)
    assert x.shape == (4, 8, 8, 1) and x.dtype == np.uint8
    assert response.headers["x-seed"] == "5" and response.headers["x-model-version"] == "1"
    assert response.headers["x-sample-start"] == "0" and response.headers["x-sample-count"] == "4"
    assert len(response.headers["x-onnx-sha256"]) == 64


def test_vector_models_return_points(client: TestClient) -> None:
    body = client.post("/generate", json={"model": "ring", "n": 5, "seed": 1}).json()
    assert body["format"] == "json" and body["shape"] == [2] and np.array(body["data"]).shape == (5, 2)
    points = npy(client.post("/generate", json={"model": "ring", "n": 5, "seed": 1, "format": "npy"}))
    assert points.dtype == np.float32 and points.shape == (5, 2)
    np.testing.assert_allclose(points, body["data"], rtol=1e-6)


def test_server_chooses_and_returns_a_seed(client: TestClient) -> None:
    first = client.post("/generate", json={"model": "ring", "n": 2, "format": "json"}).json()
    again = client.post(
        "/generate", json={"model": "ring", "n": 2, "seed": first["seed"], "format": "json"}
    ).json()
    assert isinstance(first["seed"], int) and first["data"] == again["data"]


def test_prefix_and_offset_consistency(client: TestClient) -> None:
    ten = npy(
        client.post("/generate", json={"model": "digits", "n": 10, "seed": 3, "format": "npy", "labels": 2})
    )
    five = npy(
        client.post("/generate", json={"model": "digits", "n": 5, "seed": 3, "format": "npy", "labels": 2})
    )
    tail = npy(
        client.post(
            "/generate",
            json={"model": "digits", "n": 3, "offset": 7, "seed": 3, "format": "npy", "labels": 2},
        )
    )
    assert five.tobytes() == ten[:5].tobytes() and tail.tobytes() == ten[7:].tobytes()
    other = npy(
        client.post("/generate", json={"model": "digits", "n": 5, "seed": 4, "format": "npy", "labels": 2})
    )
    assert other.tobytes() != five.tobytes()


def test_truncation_changes_samples_deterministically(client: TestClient) -> None:
    body = {"model": "ring", "n": 20, "seed": 9, "format": "json"}
    plain = client.post("/generate", json=body).json()["data"]
    cut = client.post("/generate", json=body | {"truncation": 0.5}).json()
    assert cut["data"] != plain and cut["truncation"] == 0.5
    assert client.post("/generate", json=body | {"truncation": 0.5}).json()["data"] == cut["data"]


def test_labels_by_name_index_list_and_default_cycle(client: TestClient) -> None:
    base = {"model": "digits", "n": 3, "seed": 2, "format": "npy"}
    by_name = npy(client.post("/generate", json=base | {"labels": ["1", "2", "3"]}))
    by_index = npy(client.post("/generate", json=base | {"labels": [1, 2, 3]}))
    assert by_name.tobytes() == by_index.tobytes()
    cycled = client.post("/generate", json={"model": "digits", "n": 12, "seed": 2}).json()["labels"]
    assert cycled == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


async def _burst(app: Any, requests: list[dict[str, Any]]) -> list[bytes]:
    async with asgi_client(app) as c:
        responses = await asyncio.gather(*(c.post("/generate", json=r) for r in requests))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.content for r in responses]


def test_a_sample_does_not_depend_on_its_batch(model_dir: Path) -> None:
    """A concurrent burst of mixed sizes is batched every which way; each sample's bytes stay the same."""
    base = {"model": "digits", "seed": 21, "format": "npy", "labels": 4}
    requests = [base | {"n": 1 + i % 5, "offset": i} for i in range(40)]
    app = create_app(Settings(model_dir=model_dir, max_batch_rows=7, max_wait_ms=5))
    burst = asyncio.run(_burst(app, requests))
    alone = asyncio.run(
        _burst(create_app(Settings(model_dir=model_dir, max_batch_rows=1)), [base | {"n": 48}])
    )[0]
    reference = np.load(io.BytesIO(alone))
    for request, content in zip(requests, burst, strict=True):
        got = np.load(io.BytesIO(content))
        start = request["offset"]
        assert got.tobytes() == reference[start : start + request["n"]].tobytes()
    histogram = app.state.gan.metrics.batch_rows.labels("digits")
    assert histogram._sum.get() == sum(r["n"] for r in requests)  # every row went through a batch


# --- /interpolate ---


def test_interpolate_between_seeds_blends_labels(client: TestClient) -> None:
    body = {"model": "digits", "start": {"seed": 1, "label": 0}, "end": {"seed": 2, "label": "9"}, "steps": 5}
    response = client.post("/interpolate", json=body | {"format": "json"}).json()
    assert response["t"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(response["data"]) == 5
    ends = npy(
        client.post("/generate", json={"model": "digits", "n": 1, "seed": 1, "labels": 0, "format": "npy"})
    )
    path = npy(client.post("/interpolate", json=body | {"format": "npy"}))
    assert (
        path.shape == (5, 8, 8, 1) and path[0].tobytes() == ends[0].tobytes()
    )  # the path starts at sample 0


def test_interpolate_explicit_z_and_lerp(client: TestClient) -> None:
    body = {"model": "ring", "start": {"z": [0.0] * 8}, "end": {"z": [1.0] * 8}, "steps": 3, "method": "lerp"}
    response = client.post("/interpolate", json=body)
    assert response.status_code == 200 and len(response.json()["data"]) == 3


# --- /augment ---


def test_augment_balance_pages_deterministically(client: TestClient) -> None:
    counts = [10, 4, 7, 10, 0, 10, 10, 10, 10, 10]
    body = {"model": "digits", "class_counts": counts, "target": "balance", "seed": 5}
    whole = np.load(io.BytesIO(client.post("/augment", json=body).content))
    assert list(np.bincount(whole["y"], minlength=10)) == [0, 6, 3, 0, 10, 0, 0, 0, 0, 0]
    assert whole["x"].shape == (19, 8, 8, 1) and whole["x"].dtype == np.uint8
    assert list(whole["index"]) == list(range(19)) and int(whole["seed"]) == 5
    assert list(whole["class_names"]) == [str(d) for d in range(10)]
    pages = [
        np.load(io.BytesIO(client.post("/augment", json=body | {"offset": o, "limit": 8}).content))
        for o in (0, 8, 16)
    ]
    assert np.concatenate([p["x"] for p in pages]).tobytes() == whole["x"].tobytes()
    assert np.concatenate([p["y"] for p in pages]).tolist() == whole["y"].tolist()


def test_augment_per_class_ratio_png_and_unconditional(client: TestClient) -> None:
    per_class = client.post(
        "/augment", json={"model": "digits", "per_class": {"3": 2, "7": 1}, "seed": 1, "format": "png"}
    )
    assert per_class.status_code == 200 and per_class.json()["labels"] == [3, 3, 7]
    assert per_class.headers["x-total-rows"] == "3" and len(per_class.json()["images"]) == 3
    ratio = client.post("/augment", json={"model": "digits", "class_counts": {"0": 10, "1": 4}, "ratio": 0.5})
    assert np.bincount(np.load(io.BytesIO(ratio.content))["y"]).tolist() == [5, 2]
    plain = np.load(io.BytesIO(client.post("/augment", json={"model": "ring", "n": 6, "seed": 2}).content))
    assert plain["x"].shape == (6, 2) and "y" not in plain.files


# --- models, health, metrics ---


def test_models_listing(client: TestClient, provider: str) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"digits", "ring"}
    version = models["digits"]["versions"][0]
    assert version["status"] == "ready" and version["default"] and version["provider"] == provider
    assert version["manifest"]["num_classes"] == 10 and models["digits"]["default_version"] == 1
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/readyz").status_code == 200


def test_metrics_exposition_passes_promtool(client: TestClient, provider: str) -> None:
    client.post("/generate", json={"model": "ring", "n": 3, "seed": 1})
    client.post("/generate", json={"model": "ring", "n": 99999})
    text = client.get("/metrics").text
    for name in ("gan_requests_total", "gan_request_latency_seconds_bucket", "gan_queue_wait_seconds_bucket",
                 "gan_inference_seconds_bucket", "gan_batch_rows_bucket", "gan_queue_rows", "gan_samples_generated_total",
                 "gan_rejections_total", "gan_model_info"):  # fmt: skip
        assert f"\n{name}" in text, name
    assert 'gan_requests_total{endpoint="/generate",model="ring",status="200"}' in text
    assert 'gan_rejections_total{model="ring",reason="invalid"}' in text
    assert f'gan_model_info{{model="digits",provider="{provider}",' in text
    assert shutil.which("promtool"), "promtool comes with Debian's prometheus package (.ci/run installs it)"
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- errors ---


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "fragment"),
    [
        ("/generate", {"model": "nope"}, 404, "model", "model 'nope' not found"),
        ("/generate", {"model": "digits", "version": 4}, 404, "model", "has no version 4"),
        ("/generate", {"model": "digits", "n": 257}, 422, "n", "n must be <= 256 (GAN_MAX_N), got 257"),
        ("/generate", {"model": "digits", "n": 0}, 422, "n", "greater than or equal to 1"),
        ("/generate", {"model": "digits", "labels": 10}, 422, "labels", "label 10 out of range: must be 0 .. 9"),
        ("/generate", {"model": "digits", "labels": "cat"}, 422, "labels", "unknown class 'cat'"),
        ("/generate", {"model": "digits", "n": 2, "labels": [1]}, 422, "labels", "labels has 1 entries but n is 2"),
        ("/generate", {"model": "ring", "labels": 1}, 422, "labels", "is unconditional"),
        ("/generate", {"model": "digits", "truncation": 0.0}, 422, "truncation", "greater than or equal to 0.05"),
        ("/generate", {"model": "digits", "seed": -1}, 422, "seed", "greater than or equal to 0"),
        ("/generate", {"model": "digits", "format": "gif"}, 422, "format", "'png', 'npy' or 'json'"),
        ("/generate", {"model": "digits", "colour": 1}, 422, "colour", "Extra inputs are not permitted"),
        ("/interpolate", {"model": "ring", "start": {"z": [0] * 3}, "end": {"seed": 1}}, 422, "start.z", "z has length 3; model ring needs z_dim = 8"),
        ("/interpolate", {"model": "ring", "start": {"z": [1e9] * 8}, "end": {"seed": 1}}, 422, "start.z", "finite numbers with |z| <= 10000"),
        ("/interpolate", {"model": "ring", "start": {"seed": 1, "z": [0] * 8}, "end": {"seed": 1}}, 422, "start", "exactly one of 'seed' or 'z'"),
        ("/interpolate", {"model": "ring", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 1}, 422, "steps", "greater than or equal to 2"),
        ("/interpolate", {"model": "ring", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 999}, 422, "steps", "steps must be <= 256 (GAN_MAX_STEPS)"),
        ("/interpolate", {"model": "digits", "start": {"seed": 1}, "end": {"seed": 2, "label": 1}}, 422, "start.label", "is conditional: give a label"),
        ("/augment", {"model": "digits", "per_class": {"3": 200000}}, 422, "per_class", "at most 100000 (GAN_MAX_AUGMENT_ROWS)"),
        ("/augment", {"model": "digits", "per_class": {"3": 5}, "offset": 5}, 422, "offset", "offset must be < 5"),
        ("/augment", {"model": "digits", "per_class": {"3": 5000}, "limit": 5000}, 422, "limit", "limit must be <= 4096 (GAN_MAX_PAGE_ROWS)"),
        ("/augment", {"model": "digits", "per_class": {"11": 5}}, 422, "per_class.11", "label 11 out of range"),
        ("/augment", {"model": "digits", "class_counts": [1, 2]}, 422, "body", "needs exactly one of target='balance' or 'ratio'"),
        ("/augment", {"model": "digits", "class_counts": [1, 2], "target": "balance"}, 422, "class_counts", "has 2 entries; the model has 10 classes"),
        ("/augment", {"model": "digits", "per_class": {"1": -4}}, 422, "body", "counts must be >= 0"),
        ("/augment", {"model": "digits", "n": 5}, 422, "n", "is conditional"),
        ("/augment", {"model": "ring", "per_class": {"1": 2}}, 422, "n", "is unconditional"),
        ("/augment", {"model": "digits", "class_counts": [3] * 10, "target": "balance"}, 422, "class_counts", "0 synthetic rows"),
    ],
)  # fmt: skip
def test_errors_name_the_field_and_the_limit(
    client: TestClient, path: str, body: dict[str, Any], status: int, field: str, fragment: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and fragment in response.json()["detail"], response.json()


def test_non_finite_z_is_refused(client: TestClient) -> None:
    content = '{"model": "ring", "start": {"z": [NaN, 0, 0, 0, 0, 0, 0, 0]}, "end": {"seed": 1}}'
    response = client.post("/interpolate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "start.z"


def test_oversized_body_gets_413(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir, max_body_bytes=2048))) as small:
        response = small.post(
            "/interpolate", json={"model": "ring", "start": {"z": [0.5] * 2000}, "end": {"seed": 1}}
        )
        assert response.status_code == 413 and "GAN_MAX_BODY_BYTES" in response.json()["detail"]
        assert small.post("/generate", json={"model": "ring"}).status_code == 200


def test_malformed_json(client: TestClient) -> None:
    response = client.post("/generate", content="{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["detail"]


def test_overload_gets_429_with_computed_retry_after(model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir,
        max_queue_rows=40,
        max_n=40,
        max_steps=40,
        max_page_rows=40,
        max_batch_rows=8,
        runners=1,
        max_wait_ms=0,
    )

    async def scenario() -> tuple[list[int], httpx.Response]:
        app = create_app(settings)
        async with asgi_client(app) as c:
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            hold.batcher.rows_per_s = 10.0  # as if measured
            body = {"model": "ring", "n": 10, "seed": 1, "format": "npy"}
            accepted = []
            for queued in (2, 12, 22, 32):  # one at a time: the first 8 rows go to the (held) worker, 32 wait
                accepted.append(asyncio.ensure_future(c.post("/generate", json=body)))
                await hold.until(entered=1, queued=queued)
            refused = await c.post("/generate", json=body)  # 32 + 10 > 40
            hold.gate.set()
            return [r.status_code for r in await asyncio.gather(*accepted)], refused

    statuses, refused = asyncio.run(scenario())
    assert statuses == [200] * 4  # everything accepted is served
    assert refused.status_code == 429 and "queue full" in refused.json()["detail"]
    # 32 rows queued and 10 more asked for, at 10 rows/s
    assert int(refused.headers["retry-after"]) == 5


def test_deadline_gives_504(model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir, request_timeout_s=0.5, max_batch_rows=4, max_wait_ms=0, runners=1
    )
    first, late = past_deadline(settings, "/generate", {"model": "ring", "n": 4}, {"model": "ring", "n": 1})
    assert first.status_code == 200
    assert late.status_code == 504 and "GAN_REQUEST_TIMEOUT_S" in late.json()["detail"]


def test_draining_gives_503(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:
        c.app.state.gan.draining = True  # type: ignore[attr-defined]
        assert c.get("/readyz").status_code == 503
        refused = c.post("/generate", json={"model": "ring"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def test_a_request_whose_client_left_is_not_computed(model_dir: Path) -> None:
    async def scenario() -> tuple[float, float, list[dict[str, Any]]]:
        app = create_app(Settings(model_dir=model_dir, max_batch_rows=4, max_wait_ms=0, runners=1))
        async with asgi_client(app) as c:
            hold = Hold(app.state.gan.repository.get("ring").batcher)
            busy = asyncio.ensure_future(
                c.post("/generate", json={"model": "ring", "n": 4})
            )  # occupies the worker
            await hold.until(entered=1, queued=0)
            left, messages = asyncio.Event(), [{"type": "http.request", "body": b'{"model": "ring", "n": 3}'}]
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await left.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http", "method": "POST", "path": "/generate", "raw_path": b"/generate", "query_string": b"",
                "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
                "server": ("t", 80), "client": ("c", 1), "root_path": "",
            }  # fmt: skip
            request = asyncio.ensure_future(app(scope, receive, send))
            await hold.until(entered=1, queued=3)
            left.set()  # the client hangs up while its rows wait behind the busy batch
            await request
            hold.gate.set()
            assert (await busy).status_code == 200
            metrics = app.state.gan.metrics
            computed = metrics.batch_rows.labels("ring")._sum.get()
            gone = metrics.rejections.labels("ring", "client_gone")._value.get()
            return computed, gone, sent

    computed, gone, sent = asyncio.run(scenario())
    assert computed == 4  # only the busy request's rows were ever computed
    assert gone == 1 and sent[0]["status"] == 499


# --- the /generate fast path answers exactly as the FastAPI route ---

FAST_PATH_CASES: list[tuple[str, dict[str, str]]] = [
    ('{"model": "digits", "n": 3, "seed": 5, "labels": "3", "format": "npy"}', {}),
    ('{"model": "digits", "n": 2, "seed": 5, "labels": [1, 9]}', {}),
    ('{"model": "ring", "n": 4, "seed": 2, "format": "json", "truncation": 0.7}', {}),
    (
        '{"model": "ring", "n": 4, "seed": 2, "offset": 3}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    ('{"model": "digits", "n": 2, "labels": [1]}', {}),
    ('{"model": "digits", "n": 0}', {}),
    ('{"model": "digits", "offset": false}', {}),
    ('{"model": "digits", "labels": [1, "a", 2.5]}', {}),
    ('{"model": "nope"}', {}),
    ('{"model": "digits", "version": 9}', {}),
    ('{"model": "ring", "labels": 1}', {}),
    ('{"model": "digits", "n": 300}', {}),
    ('{"model": "digits", "extra": 1}', {}),
    ("[1, 2]", {}),
    ("{nope", {}),
    ("", {}),
]


@pytest.mark.parametrize(("body", "headers"), FAST_PATH_CASES)
def test_fast_path_answers_like_the_fastapi_route(
    model_dir: Path, body: str, headers: dict[str, str]
) -> None:
    answers = []
    for fast in (True, False):
        with TestClient(create_app(Settings(model_dir=model_dir, max_n=256, fast_path=fast))) as client:
            response = client.post(
                "/generate",
                content=body,
                headers={"content-type": "application/json", "x-request-id": "same"} | headers,
            )
            metrics = client.get("/metrics").text
        rejections = [line for line in metrics.splitlines() if line.startswith("gan_rejections_total{")]
        requests = [line for line in metrics.splitlines() if line.startswith("gan_requests_total{")]
        keep = {k: v for k, v in response.headers.items() if k != "date"}
        payload = (
            response.json() if response.headers["content-type"] == "application/json" else response.content
        )
        answers.append((response.status_code, keep, payload, rejections, requests))
    fast_answer, route_answer = answers
    if (
        route_answer[0] == 422 and route_answer[2]["field"] == "body"
    ):  # not an object: each parser in its words
        assert fast_answer[2]["field"] == "body" and fast_answer[2]["detail"].startswith("body: ")
        fast_answer, route_answer = (fast_answer[0], *fast_answer[3:]), (route_answer[0], *route_answer[3:])
    assert fast_answer == route_answer
