"""Limits and overload: every limit is a setting with a clear refusal; 10x capacity is shed with 429s."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from bench.load import closed_loop
from service.main import create_app
from service.settings import Settings
from tests.support import running_service


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
    request is answered 200 within its deadline (by the service's own account: no 504, nothing dropped for
    its deadline), and RSS growth stays under a generous bound.
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
        capacity = asyncio.run(closed_loop(url, body, concurrency=4, duration_s=1.0, max_requests=400))
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
    # Accepted requests were computed within their deadline: none was dropped for it.
    dropped = [line for line in metrics.splitlines() if 'reason="deadline"' in line and line[:1] != "#"]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in dropped), dropped
    assert rss_after - rss_before < 256 << 20
    assert 'reason="queue_full"' in metrics
