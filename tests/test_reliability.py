"""Reliability and security: fuzzing, API keys, limits, overload, crash-safe training.

(The SIGTERM drain is in test_service_process.py, corrupt model files in test_service_repository.py.)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from fastapi.testclient import TestClient

from bench.load import closed_loop, free_port, running_service
from service import auth
from service.auth import ApiKeyError
from service.main import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KEY = "k3y-for-tests-0123456789"
OTHER_KEY = "another-key-abcdefghijkl"

# --- fuzzing ----------------------------------------------------------------------------------------------


def test_schemathesis_fuzzes_every_endpoint_of_a_real_server(tmp_path: Path) -> None:
    """At least 1,000 generated cases against the live OpenAPI schema: no 5xx, every response conforms.

    The only edit to the service's schema: the `model` fields list the served names (plus one unknown), so
    most cases reach the model's own validation instead of stopping at 404. Checked: everything schemathesis
    has except `positive_data_acceptance`, which expects any schema-valid body to succeed, but a static schema
    cannot say which class names or z lengths a given model takes, or the GAN_* limits in force.
    """
    with running_service({"GAN_MAX_N": "256"}) as (url, process):
        schema = httpx.get(f"{url}/openapi.json").json()
        names = sorted(m["name"] for m in httpx.get(f"{url}/models").json()["models"])
        model_names = {"type": "string", "enum": [*names, "no-such-model"]}
        for body in ("GenerateRequest", "InterpolateRequest", "AugmentRequest"):
            schema["components"]["schemas"][body]["properties"]["model"] = model_names
        (parameter,) = schema["paths"]["/models/{name}"]["get"]["parameters"]
        parameter["schema"] = model_names
        (tmp_path / "openapi.json").write_text(json.dumps(schema))
        report = tmp_path / "report.json"
        rss_before = psutil.Process(process.pid).memory_info().rss
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", str(tmp_path / "openapi.json"), "--url", url,
             "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "150",
             "--seed", "20261122", "--workers", "2", "--no-color", "--generation-database", "none",
             "--request-timeout", "30", "--report", "json", "--report-json-path", str(report)],
            cwd=tmp_path, capture_output=True, text=True, timeout=540,
        )  # fmt: skip
        alive = process.poll() is None and httpx.get(f"{url}/healthz").status_code == 200
        rss_after = psutil.Process(process.pid).memory_info().rss
    summary = json.loads(report.read_text())
    print(
        f"schemathesis: {summary['test_cases']} in {summary['running_time']:.1f} s; RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary["failures"] == [] and summary["errors"] == []
    assert summary["operations"]["tested"] == len(schema["paths"]) == 8
    assert summary["test_cases"]["generated"] >= 1000
    assert alive


def test_schemathesis_finds_an_undocumented_server_error(tmp_path: Path) -> None:
    """The fuzz above can fail: an endpoint that answers 500 to some inputs is found."""
    code = (
        "import sys, uvicorn, json\n"
        "from fastapi import FastAPI\n"
        "app = FastAPI()\n"
        "@app.get('/half')\n"
        "async def half(x: int) -> dict[str, float]:\n"
        "    return {'half': 1 / (x - 3)}\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='critical')\n"
    )
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", code, str(port)])
    try:
        wait_until(lambda: port_open(port), 30)
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{port}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "200", "--seed", "1", "--no-color",
             "--generation-database", "none"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1 and "Server error" in result.stdout, result.stdout[-3000:]


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
        return True
    except httpx.TransportError:
        return False


def wait_until(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- API keys ---------------------------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/generate", {"model": "ring", "n": 2, "seed": 1}),
    ("POST", "/interpolate", {"model": "ring", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 3}),
    ("POST", "/augment", {"model": "ring", "n": 4, "seed": 1, "format": "npz"}),
    ("GET", "/models", None),
    ("GET", "/models/ring", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/metrics", None),
]


@pytest.fixture
def keyed(model_dir: Path, tmp_path: Path) -> TestClient:
    keys = tmp_path / "keys"
    keys.write_text(f"# one key per line\n\n{OTHER_KEY}\n   # indented comment\n")
    with TestClient(create_app(Settings(model_dir=model_dir, api_key=KEY, api_keys_file=keys))) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_every_endpoint_but_the_probes_needs_a_key(
    keyed: TestClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": KEY[:-1]},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}):  # fmt: skip
        response = keyed.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["field"] == "authorization"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER_KEY}"},
                    {"X-API-Key": KEY}, {"x-api-key": OTHER_KEY}):  # fmt: skip
        assert keyed.request(method, path, json=body, headers=headers).status_code == 200, headers


def test_probes_need_no_key_and_refusals_are_counted(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200
    keyed.post("/generate", json={"model": "ring"})
    metrics = keyed.get("/metrics", headers={"X-API-Key": KEY}).text
    assert 'gan_rejections_total{model="",reason="unauthorized"} 1.0' in metrics
    assert 'gan_requests_total{endpoint="/generate",model="",status="401"} 1.0' in metrics


def test_metrics_can_be_public(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, api_key=KEY, metrics_public=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/models").status_code == 401


def test_no_key_configured_means_open(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        assert client.get("/models").status_code == 200


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every known key is compared, through hmac.compare_digest, whether or not an early one matched."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ring = auth.KeyRing([KEY, OTHER_KEY, "third-key-abcdefghijkl"])
    for presented, expected in ((KEY, True), ("x" * 30, False), ("third-key-abcdefghijkl", True)):
        calls.clear()
        assert ring.accepts(presented) is expected
        assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)  # digests: no length leak


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read it"),
        ("# only a comment\n\n", "holds no key"),
        ("short\n", "at least 16 characters"),
    ],
)
def test_a_bad_keys_file_stops_the_start_with_the_reason(
    model_dir: Path, tmp_path: Path, content: str | None, fragment: str
) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    with pytest.raises(ApiKeyError, match=fragment):
        create_app(Settings(model_dir=model_dir, api_keys_file=keys))


def test_keys_never_reach_logs_or_settings_repr(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(OTHER_KEY + "\n")
    env = {"GAN_API_KEY": KEY, "GAN_API_KEYS_FILE": str(keys), "GAN_LOG_LEVEL": "debug"}
    assert KEY not in repr(Settings(api_key=KEY)) and KEY not in str(Settings(api_key=KEY).model_dump())
    with running_service(env, stderr=subprocess.PIPE) as (url, process):
        for headers in (
            {"X-API-Key": KEY},
            {"Authorization": f"Bearer {OTHER_KEY}"},
            {"X-API-Key": KEY + "x"},
        ):
            httpx.post(f"{url}/generate", json={"model": "ring8"}, headers=headers)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        assert process.stderr is not None
        log = process.stderr.read()
    assert "API keys required (2 accepted)" in log
    assert KEY not in log and OTHER_KEY not in log


def test_the_service_refuses_to_start_on_a_bad_key_setting(tmp_path: Path) -> None:
    env = os.environ | {"GAN_API_KEYS_FILE": str(tmp_path / "absent"), "GAN_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        result.returncode == 1 and "GAN_API_KEYS_FILE" in result.stderr and "cannot read it" in result.stderr
    )


# --- limits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "path", "body", "status", "field", "fragment"),
    [
        ({"max_n": 8}, "/generate", {"model": "digits", "n": 9}, 422, "n", "GAN_MAX_N"),
        ({"max_steps": 4}, "/interpolate", {"model": "ring", "start": {"seed": 1}, "end": {"seed": 2}, "steps": 5}, 422, "steps", "GAN_MAX_STEPS"),
        ({"max_augment_rows": 100}, "/augment", {"model": "digits", "per_class": {"1": 60, "2": 41}}, 422, "per_class", "GAN_MAX_AUGMENT_ROWS"),
        ({"max_page_rows": 10}, "/augment", {"model": "ring", "n": 50, "limit": 11}, 422, "limit", "GAN_MAX_PAGE_ROWS"),
        ({"max_response_bytes": 2_000}, "/generate", {"model": "digits", "n": 100, "format": "npy"}, 422, "n", "GAN_MAX_RESPONSE_BYTES"),
        ({"max_response_bytes": 10_000}, "/augment", {"model": "digits", "per_class": {"1": 200}, "format": "png"}, 422, "limit", "GAN_MAX_RESPONSE_BYTES"),
        ({"max_response_bytes": 10_000}, "/interpolate", {"model": "digits", "start": {"seed": 1, "label": 1}, "end": {"seed": 2, "label": 2}, "steps": 100, "format": "json"}, 422, "steps", "GAN_MAX_RESPONSE_BYTES"),
        ({"max_body_bytes": 1024}, "/generate", {"model": "digits", "labels": [1] * 1000}, 413, "body", "GAN_MAX_BODY_BYTES"),
        ({}, "/generate", {"model": "digits", "n": 2, "labels": [3, 10]}, 422, "labels[1]", "out of range"),
        ({}, "/generate", {"model": "digits", "offset": -1}, 422, "offset", "greater than or equal to 0"),
        ({}, "/augment", {"model": "ring", "n": 5, "offset": 5}, 422, "offset", "must be < 5"),
        ({}, "/interpolate", {"model": "ring", "start": {"z": [0.0] * 7}, "end": {"seed": 2}}, 422, "start.z", "needs z_dim = 8"),
        ({}, "/interpolate", {"model": "ring", "start": {"z": [1e5] * 8}, "end": {"seed": 2}}, 422, "start.z", "|z| <= 10000"),
    ],
)  # fmt: skip
def test_every_limit_is_a_setting_with_a_clear_refusal(
    model_dir: Path,
    settings: dict[str, Any],
    path: str,
    body: dict[str, Any],
    status: int,
    field: str,
    fragment: str,
) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir, **settings))) as client:
        response = client.post(path, json=body)
        assert response.status_code == status, response.text
        assert response.json()["field"] == field and fragment in response.json()["detail"], response.json()
        under = {k: v for k, v in body.items() if k in ("model", "start", "end")} | {"n": 1}
        if path == "/interpolate":
            under = {"model": body["model"], "start": {"seed": 1}, "end": {"seed": 2}, "steps": 2}
            if body["model"] == "digits":
                under = {
                    "model": "digits",
                    "start": {"seed": 1, "label": 1},
                    "end": {"seed": 1, "label": 1},
                    "steps": 2,
                }
        elif path == "/augment":
            under = (
                {"model": body["model"], "n": 1}
                if body["model"] == "ring"
                else {"model": "digits", "per_class": {"1": 1}}
            )
        assert (
            client.post(path, json=under).status_code == 200
        )  # the same setting lets a small request through


# --- overload ---------------------------------------------------------------------------------------------


def test_overload_at_ten_times_capacity_sheds_with_429_and_stays_bounded() -> None:
    """Measure capacity, then offer about 10x as many concurrent rows for a fixed time.

    The process stays up, the excess gets 429 with a Retry-After computed from the drain rate, every accepted
    request is answered 200 within its deadline, and RSS growth stays under a generous bound.
    """
    timeout_s = 10.0
    env = {
        "GAN_MAX_QUEUE_ROWS": "512",
        "GAN_MAX_PAGE_ROWS": "512",
        "GAN_MAX_N": "64",
        "GAN_REQUEST_TIMEOUT_S": str(timeout_s),
    }
    body = {"model": "fashion-cgan", "n": 64, "seed": 3, "labels": 1, "format": "npy"}
    with running_service(env) as (url, process):
        server = psutil.Process(process.pid)
        capacity = asyncio.run(closed_loop(url, body, concurrency=4, duration_s=2.0, max_requests=400))
        rss_before = server.memory_info().rss
        # 4 clients keep the runner busy; 40 offer 10x as many rows, more than a 512-row queue holds.
        overload = asyncio.run(closed_loop(url, body, concurrency=40, duration_s=6.0, max_requests=20_000))
        rss_after = server.memory_info().rss
        alive = process.poll() is None and httpx.get(f"{url}/readyz").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    statuses = overload["statuses"]
    print(
        f"capacity {capacity['images_per_s']} images/s; overload {statuses}, accepted p99 "
        f"{overload['p99_ms']} ms, max {overload['max_ms']} ms, Retry-After {overload['retry_after_s']} s, "
        f"RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert capacity["errors"] == 0 and alive
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.get(429, 0) > 0 and statuses.get(200, 0) > 0
    assert overload["retry_after_s"] and all(1 <= r <= 60 for r in overload["retry_after_s"])
    assert overload["max_ms"] < timeout_s * 1000  # accepted requests finish within their deadline
    assert rss_after - rss_before < 256 << 20
    assert 'reason="queue_full"' in metrics


# --- crash-safe training ----------------------------------------------------------------------------------


def train_command(run_dir: Path, steps: int, resume: bool = False) -> list[str]:
    base = [sys.executable, "-m", "training", "train", "--run-dir", str(run_dir), "--steps", str(steps)]
    if resume:
        return [*base, "--resume", "--no-progress"]
    settings = ["batch_size=64", "g_width=64", "d_width=64", "checkpoint_every=1", "log_every=1",
                "sample_every=100000", "num_threads=1"]  # fmt: skip
    return [*base, "--preset", "toy2d", "--data", "ring8", "--no-progress", *[f"--set={s}" for s in settings]]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert isinstance(state, dict)
    return {f"{part}.{k}": v for part in ("G", "D", "G_ema") for k, v in state[part].items()}


def test_kill_9_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    steps = 60
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    subprocess.run(train_command(straight, steps), cwd=ROOT, check=True, capture_output=True)
    rng = random.Random(os.getpid())
    kill_at = rng.randint(5, steps - 10)
    process = subprocess.Popen(
        train_command(crashed, steps), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = crashed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= kill_at):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL
    # What a kill leaves is always a whole checkpoint (written beside, fsynced, renamed): it loads.
    saved = torch.load(crashed / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert 0 < saved["step"] < steps, saved["step"]
    subprocess.run(train_command(crashed, steps, resume=True), cwd=ROOT, check=True, capture_output=True)
    print(f"killed after step {saved['step']} of {steps}")
    expected, resumed = final_weights(straight), final_weights(crashed)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    """Checkpoints load with weights_only=True: a pickle that would run code is an error, not an exploit."""
    from training.loop import ResumeError, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"format": 1, "step": 1, "payload": Exploit()}, path
    )  # a real torch file whose pickle runs code
    with pytest.raises(ResumeError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_no_module_loads_pickles_unsafely() -> None:
    """Every torch.load in the code base says weights_only=True; nothing calls pickle.load or np.load with pickles."""
    offenders = []
    for source in [
        *ROOT.glob("training/**/*.py"),
        *ROOT.glob("service/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
    ]:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if ("torch.load(" in line and "weights_only=True" not in line) or "pickle.load" in line:
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
            if "allow_pickle=True" in line:
                offenders.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
