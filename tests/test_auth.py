"""API keys: every endpoint but the probes needs one, compared in constant time, never logged."""

from __future__ import annotations

import hmac
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.auth import ApiKeyError
from service.main import create_app
from service.settings import Settings
from tests.support import ROOT, free_port, running_service

KEY = "k3y-for-tests-0123456789"
OTHER_KEY = "another-key-abcdefghijkl"

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
def keyed(model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
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
