"""Restarts that drop nothing: 20 SIGTERMs of a real `python -m service` under 16 keep-alive HTTP clients (and
gRPC ones) sending continuously. Every request gets an answer from the service: 200, or 503 with Retry-After
and `Connection: close` (gRPC: OK, or UNAVAILABLE with the draining message and `retry-after`); no client
sees a reset, a closed connection without an answer, or a refused connection on one it held.

The restarts roll: the next process starts while the current one serves, as a second replica would, so the
test pays for a start only where it cannot overlap the load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support import ROOT, free_port, wait_until

RESTARTS = 20
HTTP_CLIENTS = 16
GRPC_CLIENTS = 4
MAX_REQUESTS = 400  # per client and restart: a bound, never reached in a normal run
BODY = {"model": "grid25", "n": 1, "seed": 7, "format": "npy"}
DRAINING = "the service is draining; retry on another replica"

# Every answer a client may see across a drain: served, told to retry elsewhere, or (idle) closed with a 503.
EXPECTED_ANSWERS = {
    "200",
    "503 Retry-After, Connection: close",
    "grpc OK",
    "grpc UNAVAILABLE draining, retry-after",
    "idle: 503 Retry-After, Connection: close",
}


@dataclass
class Replica:
    """One `python -m service` on free HTTP and gRPC ports on 127.0.0.1."""

    process: subprocess.Popen[str]
    url: str
    grpc_target: str

    @classmethod
    def start(cls, env: dict[str, str]) -> Replica:
        port, grpc_port = free_port(), free_port()
        full = (
            os.environ
            | env
            | {"GAN_HOST": "127.0.0.1", "GAN_PORT": str(port), "GAN_GRPC_PORT": str(grpc_port)}
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=full, stderr=subprocess.PIPE, text=True
        )
        return cls(process, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the service exited with {self.process.returncode}: {self.log()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@dataclass
class Outcomes:
    """What each client got, per request: an HTTP answer, a gRPC status, or a transport error."""

    answers: list[str] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # 200 answers per client, to know each one is going
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, client: str, outcome: str) -> None:
        with self.lock:
            self.answers.append(outcome)
            if outcome in ("200", "grpc OK"):
                self.served[client] += 1


def http_client(name: str, url: str, outcomes: Outcomes, deadline: float) -> None:
    """A keep-alive client sending /generate until the service says it closes the connection."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                return
            try:
                response = client.post("/generate", json=BODY)
            except httpx.TransportError as error:
                outcomes.add(name, f"transport error {type(error).__name__}: {error}")
                return
            closes = response.headers.get("connection", "").lower() == "close"
            if response.status_code == 200:
                outcomes.add(name, "200" if len(response.content) > 0 else "200 with an empty body")
            elif response.status_code == 503 and response.headers.get("retry-after") and closes:
                outcomes.add(name, "503 Retry-After, Connection: close")
            else:
                retry = response.headers.get("retry-after")
                outcomes.add(
                    name, f"{response.status_code} Retry-After {retry}, Connection: {closes and 'close'}"
                )
            if closes:
                return  # the service closes this connection: a client goes to another replica


def grpc_client(name: str, target: str, outcomes: Outcomes, deadline: float) -> None:
    """A gRPC client calling ModelInfer on one channel until the service refuses it (draining)."""
    request = service_pb2.ModelInferRequest(model_name="grid25")
    for key, value in (("seed", 7), ("n", 1)):
        request.parameters[key].int64_param = value
    with grpc.insecure_channel(target) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for _ in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                return
            try:
                infer(request, timeout=30)
            except grpc.RpcError as error:
                trailing = dict(error.trailing_metadata() or ())
                if error.code() == grpc.StatusCode.UNAVAILABLE and error.details() == DRAINING:
                    retry = "retry-after" if trailing.get("retry-after") else "no retry-after"
                    outcomes.add(name, f"grpc UNAVAILABLE draining, {retry}")
                else:
                    outcomes.add(name, f"grpc {error.code()} {error.details()}")
                return
            outcomes.add(name, "grpc OK")


def idle_client(url: str, outcomes: Outcomes, signalled: threading.Event) -> None:
    """A keep-alive client that is idle when SIGTERM comes and sends its next request a moment later, on the
    same connection: within the drain's grace it gets its 503, not a connection closed under its feet."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for wait in (False, True):
            if wait:
                signalled.wait(30)
                time.sleep(0.2)  # the scenario (idle at the signal), not a timing assertion
            try:
                response = client.post("/generate", json=BODY)
            except httpx.TransportError as error:
                outcomes.add("idle", f"idle: transport error {type(error).__name__}: {error}")
                return
            closes = response.headers.get("connection", "").lower() == "close"
            retry = response.headers.get("retry-after")
            if response.status_code == 200:
                outcomes.add("idle", "200")
            elif response.status_code == 503 and retry and closes:
                outcomes.add("idle", "idle: 503 Retry-After, Connection: close")
            else:
                outcomes.add(
                    "idle", f"idle: {response.status_code} Retry-After {retry}, Connection: {closes}"
                )
            if closes:
                return


def spawn(run: Callable[..., None], *args: object) -> threading.Thread:
    started = threading.Thread(target=run, args=args, daemon=True)
    started.start()
    return started


def restart_under_load(replica: Replica, outcomes: Outcomes) -> None:
    """Clients on `replica` until each has been served, then SIGTERM; returns once every client has ended."""
    deadline = time.monotonic() + 30
    signalled = threading.Event()
    threads = [
        *(spawn(http_client, f"http{i}", replica.url, outcomes, deadline) for i in range(HTTP_CLIENTS)),
        *(
            spawn(grpc_client, f"grpc{i}", replica.grpc_target, outcomes, deadline)
            for i in range(GRPC_CLIENTS)
        ),
        spawn(idle_client, replica.url, outcomes, signalled),
    ]
    wait_until(
        lambda: len(outcomes.served) == len(threads), 30, lambda: f"every client served ({outcomes.served})"
    )
    replica.process.send_signal(signal.SIGTERM)
    signalled.set()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a client still running at its deadline"


def test_twenty_restarts_under_load_answer_every_request(tmp_path: Path) -> None:
    (tmp_path / "grid25").symlink_to(ROOT / "models" / "grid25")  # one bundled model: a start loads one
    env = {
        "GAN_MODEL_DIR": str(tmp_path),
        "GAN_LOG_LEVEL": "warning",
        "GAN_DRAIN_GRACE_S": "2",
        "GAN_DRAIN_TIMEOUT_S": "10",
    }
    started = time.monotonic()
    totals: Counter[str] = Counter()
    stopped: list[Replica] = []
    current = Replica.start(env)
    try:
        wait_until(current.ready, 60, "the first replica ready")
        for _ in range(RESTARTS):
            upcoming = Replica.start(env)  # the next replica starts while this one serves and drains
            outcomes = Outcomes()
            stopped.append(current)
            restart_under_load(current, outcomes)
            totals.update(outcomes.answers)
            current = upcoming
            wait_until(current.ready, 60, "the next replica ready")
        exits = [replica.process.wait(timeout=30) for replica in stopped]
    finally:
        for replica in [*stopped, current]:
            replica.stop()
    print(f"\n{RESTARTS} restarts in {time.monotonic() - started:.1f} s: {dict(totals)}")
    expected = EXPECTED_ANSWERS
    assert set(totals) <= expected, {k: n for k, n in totals.items() if k not in expected}
    assert totals["503 Retry-After, Connection: close"] > 0
    assert totals["grpc UNAVAILABLE draining, retry-after"] > 0
    assert (
        totals["idle: 503 Retry-After, Connection: close"] == RESTARTS
    )  # each idle connection got its answer
    assert exits == [0] * RESTARTS, [replica.log() for replica in stopped]
