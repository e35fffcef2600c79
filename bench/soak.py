"""Soak: a steady load for minutes; reports the server's memory and latency drift window by window.

    python -m bench.soak --minutes 10 --concurrency 8 --model fashion-cgan --n 4 --json soak.json

Starts `python -m service` on a free 127.0.0.1 port (GAN_* variables pass through), runs the closed-loop
client from bench.load in windows of --window seconds, and after each window samples the server's RSS and
open file descriptors. Drift = last window against the first (after --warmup windows): RSS growth in MiB and
the p50/p99 ratio. Bounded by time and by --max-requests per window; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.load import closed_loop, running_service


def soak(
    model: str, n: int, fmt: str, concurrency: int, windows: int, window_s: float, max_requests: int
) -> list[dict[str, Any]]:
    body = {"model": model, "n": n, "seed": 0, "format": fmt}
    rows = []
    with running_service() as (url, process):
        server = psutil.Process(process.pid)
        for index in range(windows):
            result = asyncio.run(closed_loop(url, body, concurrency, window_s, max_requests))
            rows.append(
                {
                    "window": index,
                    "rss_mib": round(server.memory_info().rss / 2**20, 1),
                    "open_fds": server.num_fds(),
                    "threads": server.num_threads(),
                    **{k: result[k] for k in ("requests", "errors", "images_per_s", "p50_ms", "p99_ms")},
                }
            )
            print(
                f"window {index:>3}: {result['images_per_s']:>8} images/s  p50 {result['p50_ms']:>7} ms  "
                f"p99 {result['p99_ms']:>7} ms  RSS {rows[-1]['rss_mib']:>7} MiB  fds {rows[-1]['open_fds']}",
                flush=True,
            )
    return rows


def drift(rows: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    steady = rows[min(warmup, len(rows) - 1) :]
    first, last = steady[0], steady[-1]
    return {
        "rss_growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
        "rss_max_mib": max(r["rss_mib"] for r in rows),
        "p50_ratio": round(last["p50_ms"] / first["p50_ms"], 3),
        "p99_ratio": round(last["p99_ms"] / first["p99_ms"], 3),
        "fd_growth": last["open_fds"] - first["open_fds"],
        "errors": sum(r["errors"] for r in rows),
        "requests": sum(r["requests"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--format", default="png", choices=("png", "npy", "json"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per measurement window")
    parser.add_argument("--warmup", type=int, default=1, help="windows left out of the drift")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="requests per window at most")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    windows = max(2, round(args.minutes * 60 / args.window))
    rows = soak(args.model, args.n, args.format, args.concurrency, windows, args.window, args.max_requests)
    summary = drift(rows, args.warmup)
    print("drift (last window against the first after warm-up):", json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"windows": rows, "drift": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
