"""GAN_WORKERS against raw ONNX Runtime, in one run: the measurement that decides the default.

    python -m bench.workers --model fashion-cgan --workers 1 2 --rounds 2 --duration 10 --json workers.json
    python -m bench.workers --model ring8 --workers 1 2 --duration 0.3 --raw-seconds 0.05   (a quick look)

For each round and each GAN_WORKERS value, the service is started on 127.0.0.1 serving only `--model`, and a
bounded closed loop (bench.load) measures n=1 at 32 clients and n=64 at 8 clients (npy): images/s, p50, p99 and
the server's CPU (the supervisor and every worker). The denominator is raw ONNX Runtime on the same file at
batch 64 in its best configuration for the available CPUs: the better of one session with a thread per CPU and
one 1-thread session called by one thread per CPU at once, measured before and after the servers (their mean
divides; both are printed). Rounds alternate the worker counts, so a noisy neighbour shows as a spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.load import closed_loop, running_service
from bench.raw_ort import RawOrt, machine
from service.manifest import load_manifest
from service.model_folders import version_path
from service.runtime import available_cpus
from service.settings import BUNDLED_MODELS

POINTS = ((1, 32), (64, 8))  # (n, clients): the two goals


def wait_for_workers(url: str, workers: int, seconds: float = 60.0) -> set[str]:
    """Fresh connections to /readyz until `workers` distinct X-Worker answers were seen (every worker listens:
    one joins the port only once its models are loaded); the indices seen."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered within {seconds:g} s")
        response = httpx.get(f"{url}/readyz", timeout=5, headers={"Connection": "close"})
        if response.status_code == 200 and "x-worker" in response.headers:
            seen.add(response.headers["x-worker"])
        time.sleep(0.01)
    return seen


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and its children (the workers under a supervisor)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def best_raw(version_dir: Path, seconds: float) -> dict[str, float]:
    """Raw ONNX Runtime images/s at batch 64 in both configurations for the available CPUs."""
    cpus = available_cpus()
    return {
        f"one session, {cpus} threads": round(RawOrt(version_dir, cpus, 1, seconds).images_per_s(64), 1),
        f"{cpus} 1-thread runs at once": round(RawOrt(version_dir, 1, cpus, seconds).images_per_s(64), 1),
    }


def measure(
    url: str, pid: int, model: str, workers: int, args: argparse.Namespace, labels: bool
) -> list[dict[str, Any]]:
    server, rows = psutil.Process(pid), []
    for n, clients in POINTS:
        body = {"model": model, "n": n, "seed": 1, "format": args.format} | ({"labels": 1} if labels else {})
        before = cpu_seconds(server)
        result = asyncio.run(closed_loop(url, body, clients, args.duration, args.max_requests))
        result["server_cores"] = round((cpu_seconds(server) - before) / result["seconds"], 2)
        result["workers"] = workers
        rows.append(result)
    return rows


def one_model_dir(model_dir: Path, model: str, into: Path) -> Path:
    """A model directory holding only `model` (a link): a start loads only what is measured."""
    (into / model).symlink_to((model_dir / model).resolve())
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--rounds", type=int, default=1, help="each worker count this many times, alternating"
    )
    parser.add_argument("--format", default="npy", choices=("png", "npy", "json"))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests per point at most")
    parser.add_argument("--raw-seconds", type=float, default=1.5, help="raw ORT timing per configuration")
    parser.add_argument("--env", nargs="*", default=[], metavar="GAN_X=V", help="settings for every run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    version_dir = version_path(args.model_dir, args.model)
    labels = load_manifest(version_dir / "manifest.json").num_classes > 0
    raw_before = best_raw(version_dir, args.raw_seconds)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as folder:
        env = {"GAN_MODEL_DIR": str(one_model_dir(args.model_dir, args.model, Path(folder)))}
        env |= {"GAN_MAX_QUEUE_ROWS": "16384"} | dict(item.split("=", 1) for item in args.env)
        for round_ in range(args.rounds):
            for workers in args.workers:
                with running_service(env | {"GAN_WORKERS": str(workers)}) as (url, process):
                    if workers > 1:
                        wait_for_workers(url, workers)
                    for row in measure(url, process.pid, args.model, workers, args, labels):
                        rows.append(row | {"round": round_})
    raw_after = best_raw(version_dir, args.raw_seconds)
    raw = (max(raw_before.values()) + max(raw_after.values())) / 2
    print(
        f"raw ONNX Runtime, batch 64, images/s: before {raw_before}, after {raw_after}; denominator {raw:.0f}"
    )
    print(f"{'workers':>7} {'round':>5} {'n':>4} {'clients':>7} {'images/s':>9} {'ratio':>6} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'cores':>6} {'errors':>6}")  # fmt: skip
    for r in rows:
        r["ratio_to_raw"] = round(r["images_per_s"] / raw, 3)
        print(f"{r['workers']:>7} {r['round']:>5} {r['n']:>4} {r['concurrency']:>7} {r['images_per_s']:>9} "
              f"{r['ratio_to_raw']:>6.2f} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['server_cores']:>6} "
              f"{r['errors']:>6}")  # fmt: skip
    if args.json:
        report = {"machine": machine(), "cpus": available_cpus(), "model": args.model, "env": args.env,
                  "raw_before": raw_before, "raw_after": raw_after, "raw_images_per_s": raw, "points": rows}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
