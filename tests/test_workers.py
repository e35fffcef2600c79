"""GAN_WORKERS: a real `python -m service` with two worker processes on one 127.0.0.1 port (service.workers).

Both workers answer; /metrics, answered by either, counts every request exactly once; a killed worker is
restarted and the counts survive it; SIGTERM under load drains both, every request answered (the helpers of
tests/test_restarts.py); a bad GAN_WORKERS, or a worker that cannot start, stops the start with the reason;
model control and dataset job creation answer 409 naming GAN_WORKERS.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from pydantic import ValidationError

from bench.workers import wait_for_workers
from service import runtime
from service.settings import Settings
from service.workers import worker_settings
from tests.support import ROOT, free_port, running_service, wait_until
from tests.test_restarts import EXPECTED_ANSWERS, Outcomes, Replica, restart_under_load

ADMIN = "admin-key-0123456789"
BODY = {"model": "grid25", "n": 2, "seed": 3, "format": "npy"}
CLOSE = {"Connection": "close"}  # every call on a fresh connection: the kernel picks a worker for each


@pytest.fixture
def grid25_only(tmp_path: Path) -> Path:
    """A model directory with one bundled model: each worker's start loads one."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "grid25").symlink_to(ROOT / "models" / "grid25")
    return models


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:{{(.*?)}})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if labels.items() <= found.items():
            total += float(match.group(2))
    return total


def test_worker_counts_out_of_range_are_refused() -> None:
    for bad in (0, 65):
        with pytest.raises(ValidationError, match="workers"):
            Settings(workers=bad)


def test_a_bad_worker_count_stops_the_start_naming_it() -> None:
    env = os.environ | {"GAN_WORKERS": "65", "GAN_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "GAN_WORKERS" in result.stderr and "less than or equal to 64" in result.stderr, result.stderr


def test_each_worker_gets_its_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    assert worker_settings(Settings(workers=2)).intra_op_threads == 2  # 8 CPUs / 2 workers / 2 runners
    assert worker_settings(Settings(workers=3, runners=1)).intra_op_threads == 2
    assert worker_settings(Settings(workers=16)).intra_op_threads == 1  # at least one
    assert worker_settings(Settings(workers=2, intra_op_threads=3)).intra_op_threads == 3  # set: kept
    assert runtime.intra_op_threads(0, 2) == 4  # one process: as before


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_reason() -> None:
    env = os.environ | {"GAN_WORKERS": "2", "GAN_PORT": str(free_port()), "GAN_API_KEY": "short"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "API key #1 is not usable" in result.stderr, result.stderr
    assert "before it was ready" in result.stderr, result.stderr


def test_two_workers_share_the_port_and_metrics_count_every_request_once(
    grid25_only: Path, tmp_path: Path
) -> None:
    env = {
        "GAN_WORKERS": "2",
        "GAN_MODEL_DIR": str(grid25_only),
        "GAN_ADMIN_KEY": ADMIN,
        "GAN_DATA_DIR": str(tmp_path / "data"),
    }
    with running_service(env) as (url, process):
        wait_for_workers(url, 2)
        answered_by: Counter[str] = Counter()
        requests = 24
        for _ in range(requests):
            response = httpx.post(f"{url}/generate", json=BODY, headers=CLOSE, timeout=30)
            assert response.status_code == 200, response.text
            answered_by[response.headers["x-worker"]] += 1
        assert set(answered_by) == {"0", "1"}, answered_by  # all on one worker: 2 ** -23

        def scrape() -> str:
            return httpx.get(f"{url}/metrics", headers=CLOSE, timeout=10).text

        text = scrape()
        assert metric(text, "gan_requests_total", endpoint="/generate", status="200") == requests
        assert metric(text, "gan_samples_generated_total", model="grid25") == requests * BODY["n"]
        assert metric(text, "gan_worker_processes") == 2
        assert metric(text, "gan_model_versions_loaded", model="grid25") == 1  # alike in both: not summed

        # Control calls would change one worker of two: refused, on whichever answers.
        load = "/v2/repository/models/grid25/load"
        for _ in range(4):
            response = httpx.post(
                f"{url}{load}", headers=CLOSE | {"Authorization": f"Bearer {ADMIN}"}, timeout=30
            )
            assert response.status_code == 409 and "GAN_WORKERS" in response.json()["error"], response.text
        # Dataset jobs run in one process: creating one is refused; reading works on every worker.
        job = {"model": "grid25", "n": 8, "format": "npz"}
        created = httpx.post(f"{url}/datasets", json=job, headers=CLOSE, timeout=30)
        assert created.status_code == 409 and created.json()["field"] == "GAN_WORKERS", created.text
        listed = httpx.get(f"{url}/datasets", headers=CLOSE, timeout=30)
        assert listed.status_code == 200 and listed.json() == {"datasets": []}

        # A worker killed under the supervisor is restarted; the counts of the dead one are kept.
        supervisor = psutil.Process(process.pid)
        victim = supervisor.children()[0]
        victim.kill()
        wait_until(
            lambda: len([c for c in supervisor.children() if c.pid != victim.pid]) == 2,
            60,
            "a replacement worker",
        )
        wait_for_workers(url, 2)
        text = scrape()
        assert metric(text, "gan_requests_total", endpoint="/generate", status="200") == requests
        assert metric(text, "gan_worker_processes") == 2  # the dead one's live gauge is gone


def test_sigterm_drains_both_workers_and_answers_every_request(grid25_only: Path) -> None:
    env = {
        "GAN_WORKERS": "2",
        "GAN_MODEL_DIR": str(grid25_only),
        "GAN_LOG_LEVEL": "warning",
        "GAN_DRAIN_GRACE_S": "2",
        "GAN_DRAIN_TIMEOUT_S": "10",
    }
    replica = Replica.start(env)  # HTTP and gRPC: every worker serves both ports
    try:
        wait_until(replica.ready, 60, "the service ready")
        wait_for_workers(replica.url, 2)
        outcomes = Outcomes()
        restart_under_load(replica, outcomes)
        exit_code = replica.process.wait(timeout=30)
    finally:
        replica.stop()
    answers = Counter(outcomes.answers)
    expected = EXPECTED_ANSWERS
    assert set(answers) <= expected, {k: n for k, n in answers.items() if k not in expected}
    assert answers["200"] > 0 and answers["grpc OK"] > 0
    assert answers["idle: 503 Retry-After, Connection: close"] == 1
    assert exit_code == 0, replica.log()
