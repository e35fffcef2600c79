"""Closed-loop load on the service: fixed concurrency, bounded in time and requests; prints latency and images/s.

    python -m bench.load --start --model fashion-cgan --concurrency 32 --n 1 --duration 10
    python -m bench.load --url http://127.0.0.1:8000 --model grid25 --concurrency 1 --n 1

`--start` runs `python -m service` on a free 127.0.0.1 port for the duration of the run (GAN_* variables
pass through). Only loopback addresses are accepted as targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_service(
    env: dict[str, str] | None = None,
    stderr: int | None = None,
    module: list[str] | None = None,
    script: Path | None = None,
    ready_path: str = "/readyz",
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`python -m service` (or `python -m MODULE... --port PORT`, or `python SCRIPT` with PORT=<port> in its
    environment: the peers' convention) on a free 127.0.0.1 port until the block ends, ready once GET
    `ready_path` answers 200: yields (url, process)."""
    port = free_port()
    full_env = (
        os.environ
        | {"GAN_HOST": "127.0.0.1", "GAN_PORT": str(port), "GAN_LOG_LEVEL": "warning"}
        | (env or {})
    )
    command = ["-m", "service"] if module is None else ["-m", *module, "--port", str(port)]
    if script is not None:
        command, full_env = [str(script)], full_env | {"PORT": str(port)}
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=full_env, stderr=stderr, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load generator must cost far less CPU than
    the server it measures, and httpx costs about as much as the service itself on 2 cores."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, payload: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request; (status, headers with lower-case names, body)."""
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, await self.reader.readexactly(int(headers.get(b"content-length", 0)))

    def close(self) -> None:
        self.writer.close()


def http_post(
    host: str, port: int, path: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One POST request's bytes: a dict goes as JSON, bytes as they are (application/octet-stream)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n{extra}"
    return (head + f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def drive(
    clients: list[Callable[[], Awaitable[Any]]], duration_s: float, max_requests: int
) -> dict[str, Any]:
    """A bounded closed loop: each callable is one client making one request and returning its status (200 is
    success; a negative status ends that client). Each client sends its next request when the last returns,
    until `duration_s` or `max_requests` (all clients together) runs out."""
    latencies: list[float] = []
    statuses: dict[Any, int] = {}
    sent = 0
    stop_at = time.perf_counter() + duration_s

    async def client_loop(request: Callable[[], Awaitable[Any]]) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            started = time.perf_counter()
            status = await request()
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - started)
            elif isinstance(status, int) and status < 0:
                return

    began = time.perf_counter()
    await asyncio.gather(*(client_loop(c) for c in clients))
    return {
        "sent": sent,
        "latencies": latencies,
        "statuses": statuses,
        "elapsed": time.perf_counter() - began,
    }


def summary(
    run: dict[str, Any], concurrency: int, n: int, fmt: str, keep_latencies: bool = False
) -> dict[str, Any]:
    """Throughput and latency percentiles of a `drive` run whose requests each carry `n` images."""
    ok, elapsed = len(run["latencies"]), run["elapsed"]
    ms = np.array(run["latencies"]) * 1000 if ok else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "n": n,
        "format": fmt,
        "requests": run["sent"],
        "ok": ok,
        "errors": run["sent"] - ok,
        "statuses": run["statuses"],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(ok / elapsed, 1),
        "images_per_s": round(ok * n / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    } | ({"latencies_ms": [round(v, 3) for v in ms.tolist()]} if keep_latencies else {})


async def closed_loop(
    url: str,
    body: dict[str, Any] | bytes,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    path: str = "/generate",
    keep_latencies: bool = False,
    headers: dict[str, str] | None = None,
    decode: Callable[[dict[bytes, bytes], bytes], Any] | None = None,
    n: int | None = None,
    fmt: str | None = None,
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last one returns, until time or count runs out.

    `decode(headers, body)` is applied to every 200 response inside the timed request (a client that reads its
    result); `n` (images per request) and `fmt` default to the JSON body's."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    payload = http_post(host, port, path, body, headers)
    fields = body if isinstance(body, dict) else {}
    retry_after: set[int] = set()
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    await connections[0].request(payload)  # one warm request, not counted

    def client(connection: Connection) -> Callable[[], Awaitable[int]]:
        async def request() -> int:
            try:
                status, response_headers, content = await connection.request(payload)
            except (OSError, asyncio.IncompleteReadError):
                return -1
            if status == 200 and decode is not None:
                decode(response_headers, content)
            elif status == 429:
                retry_after.add(int(response_headers.get(b"retry-after", b"-1")))
            return status

        return request

    run = await drive([client(c) for c in connections], duration_s, max_requests)
    for connection in connections:
        connection.close()
    images = n if n is not None else fields.get("n", 1)
    result = summary(run, concurrency, images, fmt or fields.get("format", "png"), keep_latencies)
    return result | {"retry_after_s": sorted(retry_after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running service on a loopback address")
    target.add_argument("--start", action="store_true", help="start the service for this run")
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--format", default="png", choices=("png", "npy", "json"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="requests per level at most")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address")
    body = {"model": args.model, "n": args.n, "seed": 0, "format": args.format}

    def run(url: str) -> list[dict[str, Any]]:
        return [
            asyncio.run(closed_loop(url, body, c, args.duration, args.max_requests)) for c in args.concurrency
        ]

    if args.start:
        with running_service() as (url, _):
            results = run(url)
    else:
        results = run(args.url)
    print(
        f"{'clients':>7} {'n':>5} {'req/s':>9} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for r in results:
        print(f"{r['concurrency']:>7} {r['n']:>5} {r['requests_per_s']:>9} {r['images_per_s']:>9} "
              f"{r['p50_ms']:>8} {r['p95_ms']:>8} {r['p99_ms']:>8} {r['errors']:>6}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
