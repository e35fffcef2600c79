"""The service as a real process: no torch on import, and the SIGTERM drain on a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.load import running_service

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_service_does_not_load_torch() -> None:
    code = (
        "import sys, service.main, service.__main__; print('torch' in sys.modules, 'training' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


async def accepted(client: httpx.AsyncClient) -> float:
    """Requests in flight plus those already answered, from the service's own metrics."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gan_inflight_requests ") or line.startswith(
            'gan_requests_total{endpoint="/generate"'
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_drains_accepted_work_and_refuses_new() -> None:
    drain_timeout = 30.0
    env = {"GAN_DRAIN_TIMEOUT_S": str(drain_timeout), "GAN_MAX_QUEUE_ROWS": "100000", "GAN_LOG_LEVEL": "info"}
    body = {"model": "fashion-cgan", "n": 1024, "seed": 1, "format": "npy"}

    async def scenario(
        url: str, process: subprocess.Popen[str]
    ) -> tuple[list[httpx.Response], int, int, float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            load = [asyncio.ensure_future(client.post("/generate", json=body)) for _ in range(16)]
            while await accepted(client) < len(load):  # all 16 accepted: seconds of work queued for 2 cores
                await asyncio.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            ready = 200
            while ready != 503 and time.monotonic() - signalled < 1.0:
                ready = (await client.get("/readyz")).status_code
            late = (await client.post("/generate", json=body | {"n": 1})).status_code
            responses = list(await asyncio.gather(*load))
            return responses, ready, late, signalled

    with running_service(env, stderr=subprocess.PIPE) as (url, process):
        responses, ready, late, signalled = asyncio.run(scenario(url, process))
        exit_code = process.wait(timeout=drain_timeout + 15)
        exited_after = time.monotonic() - signalled
        assert process.stderr is not None
        log = process.stderr.read()
    statuses = [r.status_code for r in responses]
    assert ready == 503 and late == 503
    assert statuses == [200] * 16  # every request accepted before SIGTERM is served: none lost
    assert all(len(r.content) > 1024 * 28 * 28 for r in responses)
    assert exit_code == 0 and exited_after < drain_timeout
    assert "complete: True" in log, log
