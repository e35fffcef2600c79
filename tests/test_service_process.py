"""The service as a real process: no torch on import, and the SIGTERM drain on a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import httpx

from tests.support import ROOT, eventually, running_service


def test_importing_the_service_does_not_load_torch() -> None:
    code = (
        "import sys, service.main, service.__main__; print('torch' in sys.modules, 'training' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


async def accepted(client: httpx.AsyncClient, wanted: int) -> bool:
    """Whether `wanted` requests are in flight or already answered, by the service's own metrics."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gan_inflight_requests ") or line.startswith(
            'gan_requests_total{endpoint="/generate"'
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total >= wanted


def test_sigterm_drains_accepted_work_and_refuses_new() -> None:
    # A drain timeout far beyond the test's own deadlines: a drain that waited it out, instead of ending
    # when the work did, fails them.
    drain_timeout = 600.0
    env = {"GAN_DRAIN_TIMEOUT_S": str(drain_timeout), "GAN_MAX_QUEUE_ROWS": "100000", "GAN_LOG_LEVEL": "info"}
    n = 256
    body = {"model": "fashion-cgan", "n": n, "seed": 1, "format": "npy"}

    async def scenario(url: str, process: subprocess.Popen[str]) -> tuple[list[httpx.Response], int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            load = [asyncio.ensure_future(client.post("/generate", json=body)) for _ in range(16)]
            # all 16 accepted: a few seconds of work queued for 2 cores
            await eventually(
                lambda: accepted(client, len(load)), 60, "all 16 requests accepted", interval=0.02
            )
            process.send_signal(signal.SIGTERM)
            readiness: list[int] = []

            async def not_ready() -> bool:
                readiness.append((await client.get("/readyz")).status_code)
                return readiness[-1] == 503

            await eventually(not_ready, 60, "/readyz to answer 503", interval=0.01)
            late = (await client.post("/generate", json=body | {"n": 1})).status_code
            responses = list(await asyncio.gather(*load))
            return responses, readiness[-1], late

    with running_service(env, stderr=subprocess.PIPE) as (url, process):
        responses, ready, late = asyncio.run(scenario(url, process))
        exit_code = process.wait(timeout=60)  # once the work is done, not after the drain timeout
        assert process.stderr is not None
        log = process.stderr.read()
    statuses = [r.status_code for r in responses]
    assert ready == 503 and late == 503
    assert statuses == [200] * 16  # every request accepted before SIGTERM is served: none lost
    assert all(len(r.content) > n * 28 * 28 for r in responses)
    assert exit_code == 0
    assert "complete: True" in log, log
    # The drain had work to wait for: SIGTERM came while accepted requests were still being computed.
    (in_flight,) = re.findall(r"draining: (\d+) requests in flight", log)
    assert int(in_flight) > 0, log
