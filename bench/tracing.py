"""What tracing and the access log cost: the same closed loop on the service with each off and on, in one run.

    python -m bench.tracing                                  (ring8, n = 1, concurrency 1 and 8, 3 rounds)
    python -m bench.tracing --model fashion-cgan --concurrency 8 --duration 2 --rounds 2
    python -m bench.tracing --trace --model fashion-cgan    (the spans of three requests merged into one batch)

Configurations, each its own `python -m service` on 127.0.0.1, run in turn within every round so that drift on a
shared machine falls on all of them alike: `off` (no OTEL_* variables, GAN_LOG_LEVEL=warning, as the other
benchmarks run), `tracing` (OTLP/HTTP export to a sink in this process that answers 200 to every batch: the
SDK's real work, span creation, batching, protobuf encoding, the POSTs, without a backend's), `tracing 10%`
(the same, sampling one trace in ten: OTEL_TRACES_SAMPLER=parentbased_traceidratio), and `access log`
(GAN_ACCESS_LOG=true, GAN_LOG_LEVEL=info: one JSON line per request, to /dev/null). Prints the median requests/s of each and the
server's CPU time per request (user + system, all its threads), each with its ratio to `off`. A tiny model at
n = 1 is the worst case: the per-request overhead is most of the request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from bench.load import closed_loop, running_service


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that keeps nothing: reads each export and answers 200."""

    exports = 0
    received_bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        Sink.received_bytes += len(self.rfile.read(length))
        Sink.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def configurations(sink: str) -> dict[str, dict[str, str]]:
    return {
        "off": {},
        "tracing": {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "bench"},
        "tracing 10%": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
        "access log": {"GAN_LOG_LEVEL": "info", "GAN_ACCESS_LOG": "true"},
    }


def measure(
    env: dict[str, str], body: dict[str, Any], concurrency: list[int], args: Any
) -> list[tuple[float, float]]:
    """(requests/s, the server's CPU milliseconds per request) at each concurrency, on a service started with
    `env`. CPU per request is the steadier figure on a shared machine: other processes slow the loop down, but
    hardly change what one request costs the server."""
    with running_service(env, stderr=subprocess.DEVNULL) as (url, process):
        server = psutil.Process(process.pid)
        points = []
        for c in concurrency:
            before = sum(server.cpu_times()[:2])
            run = asyncio.run(closed_loop(url, body, c, args.duration, args.max_requests, fmt=body["format"]))
            cpu_s = sum(server.cpu_times()[:2]) - before
            assert run["errors"] == 0, run["statuses"]
            points.append((run["requests_per_s"], 1000 * cpu_s / max(run["requests"], 1)))
        return points


def one_trace(model: str) -> None:
    """Prints the spans of three concurrent requests merged into one batch (in process, in-memory exporter)."""
    import shutil
    import tempfile

    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service import tracing
    from service.main import create_app
    from service.settings import BUNDLED_MODELS, Settings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    caller = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    async def trio(app: Any) -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as c,
        ):
            calls = [
                c.post("/generate", json={"model": model, "n": n, "seed": 7, "format": "npy"},
                       headers={"X-Request-ID": f"demo-{i}"} | (caller if i == 0 else {}))
                for i, n in enumerate((1, 4, 2))
            ]  # fmt: skip
            for response in await asyncio.gather(*calls):
                print(response.status_code, response.headers["x-request-id"], response.headers["traceparent"])

    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(BUNDLED_MODELS / model, Path(root) / model)
        asyncio.run(trio(create_app(Settings(model_dir=Path(root), max_wait_ms=50, inline_rows=0))))
    for span in exporter.get_finished_spans():
        print(span.to_json(indent=None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ring8")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--format", default="npy")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace", action="store_true", help="print the spans of one batched trio and stop")
    args = parser.parse_args(argv)
    if args.trace:
        one_trace(args.model)
        return 0
    body = {"model": args.model, "n": args.n, "format": args.format}
    with otlp_sink() as sink:
        configs = configurations(sink)
        points: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, env in configs.items():
                points[name].append(measure(env, body, args.concurrency, args))
    rows = []
    for name, runs in points.items():
        for i, c in enumerate(args.concurrency):
            rate, cpu = (statistics.median(run[i][k] for run in runs) for k in (0, 1))
            base_rate, base_cpu = (statistics.median(run[i][k] for run in points["off"]) for k in (0, 1))
            rows.append(
                {"config": name, "concurrency": c, "requests_per_s": rate, "rate_ratio": rate / base_rate,
                 "cpu_ms_per_request": round(cpu, 3), "cpu_ratio": cpu / base_cpu}
            )  # fmt: skip
    print(f"{args.model}, n = {args.n}, {args.format}; median of {args.rounds} rounds of {args.duration:g} s")
    for row in rows:
        print(
            f"  {row['config']:<12} c={row['concurrency']:<3} {row['requests_per_s']:8.1f} req/s "
            f"x{row['rate_ratio']:.3f}   server CPU {row['cpu_ms_per_request']:.3f} ms/request "
            f"x{row['cpu_ratio']:.3f}"
        )
    print(f"  the sink took {Sink.exports} OTLP exports, {Sink.received_bytes / 1024:.0f} KiB")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "exports": Sink.exports}, indent=2))
    return 0 if Sink.exports > 0 else 1  # tracing on must have exported something


if __name__ == "__main__":
    raise SystemExit(main())
