"""The service end to end against raw ONNX Runtime and the naive baseline, in one run.

    python -m bench.serve --json serve.json --plots docs/bench
    python -m bench.serve --concurrency 1 8 --ns 1 --formats npy --duration 0.5   (a quick look)

For each server — the service with batching (default settings), the service without (GAN_MAX_BATCH_ROWS=1),
and the naive FastAPI + ORT app — and each format, n and concurrency: a bounded closed loop on 127.0.0.1
(bench.load) measures images/s, requests/s, p50/p95/p99 and the server's CPU (cores busy). For the service, the
mean rows per inference batch comes from its own metrics, and raw ONNX Runtime is timed at that batch size in
the same run with the same threads: ratio = service images/s ÷ raw images/s. Batching gain = batching on ÷
off at the same point. The client runs on the same machine and its CPU is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.load import closed_loop, running_service
from bench.raw_ort import RawOrt, machine, service_threads
from service.model_folders import version_path
from service.settings import BUNDLED_MODELS

SERVERS: dict[str, dict[str, Any]] = {
    "service": {"env": {}},
    # the tuning levers that are settings, turned back to where they started (one runner, every request
    # through FastAPI's routing, every batch on a worker thread)
    "service, untuned settings": {
        "env": {"GAN_RUNNERS": "1", "GAN_FAST_PATH": "false", "GAN_INLINE_ROWS": "0"}
    },
    "service, no batching": {"env": {"GAN_MAX_BATCH_ROWS": "1"}},
    # every request through FastAPI's routing: what the /generate fast path (service/fastpath.py) saves;
    # run on request only (--servers), not by default
    "service, no fast path": {"env": {"GAN_FAST_PATH": "false"}, "default": False},
    "naive FastAPI + ORT": {"module": ["bench.naive", "--model", "{model}"]},
    "bare ASGI (HTTP only)": {"module": ["bench.bare"]},
}


def batch_totals(url: str, model: str) -> tuple[float, float]:
    """(rows, batches) so far from the service's gan_batch_rows histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for kind in ("sum", "count"):
        match = re.search(rf'^gan_batch_rows_{kind}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
        found[kind] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def sweep(
    name: str, url: str, pid: int, model: str, args: argparse.Namespace, raw: RawOrt | None
) -> list[dict[str, Any]]:
    server, client = psutil.Process(pid), psutil.Process()
    rows = []
    labels = {"labels": 1} if raw is not None and raw.manifest.num_classes else {}
    for fmt in args.formats:
        for n in args.ns:
            for concurrency in args.concurrency:
                body = {"model": model, "n": n, "seed": 1, "format": fmt, **labels}
                before = (server.cpu_times(), client.cpu_times(), batch_totals(url, model) if raw else (0, 0))
                result = asyncio.run(
                    closed_loop(url, body, concurrency, args.duration, args.max_requests, keep_latencies=True)
                )
                after = (server.cpu_times(), client.cpu_times(), batch_totals(url, model) if raw else (0, 0))
                seconds = result["seconds"]
                result["server"] = name
                result["server_cores"] = round(
                    (after[0].user + after[0].system - before[0].user - before[0].system) / seconds, 2
                )
                result["client_cores"] = round(
                    (after[1].user + after[1].system - before[1].user - before[1].system) / seconds, 2
                )
                if raw is not None:
                    batches = after[2][1] - before[2][1]
                    mean_rows = (after[2][0] - before[2][0]) / batches if batches else float(n)
                    result["mean_batch_rows"] = round(mean_rows, 1)
                    raw_rate = raw.images_per_s(int(np.clip(round(mean_rows), 1, 4096)))
                    result["raw_ort_images_per_s"] = round(raw_rate, 1)
                    result["ratio_to_raw"] = round(result["images_per_s"] / raw_rate, 3)
                rows.append(result)
                print(
                    f"{name:<22} {fmt:>4} n={n:<3} c={concurrency:<4} {result['images_per_s']:>9} img/s "
                    f"{result['requests_per_s']:>8} req/s  p50 {result['p50_ms']:>7} p99 {result['p99_ms']:>7} ms  "
                    f"server {result['server_cores']} cores"
                    + (
                        f"  batch {result['mean_batch_rows']:>5}  raw {result['raw_ort_images_per_s']:>8}  "
                        f"ratio {result['ratio_to_raw']:.2f}"
                        if raw is not None
                        else ""
                    ),
                    flush=True,
                )
    return rows


def gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batching on ÷ off, and the service ÷ the naive baseline, point by point."""
    index = {(r["server"], r["format"], r["n"], r["concurrency"]): r for r in rows}
    out = []
    for (server, fmt, n, c), r in index.items():
        if server != "service":
            continue
        off = index.get(("service, no batching", fmt, n, c))
        naive = index.get(("naive FastAPI + ORT", fmt, n, c))
        untuned = index.get(("service, untuned settings", fmt, n, c))
        out.append(
            {
                "format": fmt, "n": n, "concurrency": c,
                "batching_gain": round(r["images_per_s"] / off["images_per_s"], 2) if off else None,
                "vs_naive": round(r["images_per_s"] / naive["images_per_s"], 2) if naive else None,
                "vs_untuned": round(r["images_per_s"] / untuned["images_per_s"], 2) if untuned else None,
                "p50_ms": r["p50_ms"],
                "untuned_p50_ms": untuned["p50_ms"] if untuned else None,
            }
        )  # fmt: skip
    return out


def low_load_tax(rows: list[dict[str, Any]], raw: RawOrt) -> dict[str, float] | None:
    """Service p50 at 1 client, n=1 against bare HTTP p50 plus one direct ORT call: the batcher's latency tax."""
    pick = {r["server"]: r for r in rows if r["concurrency"] == 1 and r["n"] == 1 and r["format"] == "npy"}
    if "service" not in pick or "bare ASGI (HTTP only)" not in pick:
        return None
    ort_ms = raw.latency_ms(1)
    service, http = pick["service"]["p50_ms"], pick["bare ASGI (HTTP only)"]["p50_ms"]
    return {"service_p50_ms": service, "http_p50_ms": http, "ort_ms": round(ort_ms, 3),
            "tax_ms": round(service - http - ort_ms, 3)}  # fmt: skip


def plots(rows: list[dict[str, Any]], directory: Path, model: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [throughput_plot(rows, directory, model), latency_plot(rows, directory, model)]


def throughput_plot(rows: list[dict[str, Any]], directory: Path, model: str) -> Path:
    """images/s against clients per server (the bare ASGI app is left out: it generates nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["format"], r["n"]) for r in rows})
    fig, axes = plt.subplots(1, len(combos), figsize=(4.5 * len(combos), 4), squeeze=False)
    for ax, (fmt, n) in zip(axes[0], combos, strict=True):
        for server in [s for s in SERVERS if not s.startswith("bare")]:
            points = sorted(
                (r["concurrency"], r["images_per_s"])
                for r in rows
                if r["server"] == server and r["format"] == fmt and r["n"] == n
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=server)
        raw = [
            r["raw_ort_images_per_s"]
            for r in rows
            if r["server"] == "service" and r["format"] == fmt and r["n"] == n
        ]
        if raw:
            ax.axhline(max(raw), color="gray", linestyle="--", label="raw ORT at the batch formed (best)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("images/s")
        ax.set_title(f"{model}, n={n}, {fmt}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = directory / "throughput-vs-concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_plot(rows: list[dict[str, Any]], directory: Path, model: str) -> Path:
    """Latency CDFs at n=1 for 1 and 32 clients, every server (the bare ASGI app is the HTTP floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["n"] == 1 and r["format"] == rows[0]["format"] and r["concurrency"] in (1, 32):
            values = np.sort(np.array(r["latencies_ms"]))
            if values.size:
                ax.plot(
                    values, np.linspace(0, 1, values.size), label=f"{r['server']}, {r['concurrency']} clients"
                )
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{model}, n=1: latency distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = directory / "latency-distribution.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-cgan")
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODELS)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=[s for s in SERVERS if SERVERS[s].get("default", True)],
        choices=list(SERVERS),
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--formats", nargs="+", default=["png", "npy"], choices=("png", "npy", "json"))
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests per point at most")
    parser.add_argument("--raw-seconds", type=float, default=1.0, help="raw ORT timing per batch size")
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="GAN_X=V", help="settings for both service runs"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path, help="write the PNG plots into this folder")
    parser.add_argument(
        "--replot", type=Path, help="only redraw the throughput plot from a JSON of an earlier run"
    )
    args = parser.parse_args(argv)
    if args.replot:
        report = json.loads(args.replot.read_text())
        print(f"wrote {throughput_plot(report['points'], args.plots or args.replot.parent, report['model'])}")
        return 0
    # 128 clients x 64 rows must fit in the queue, or the sweep measures 429s instead of throughput.
    extra_env = {"GAN_MAX_QUEUE_ROWS": "16384"} | dict(item.split("=", 1) for item in args.env)
    version_dir = version_path(args.model_dir, args.model)
    references: dict[tuple[int, int], RawOrt] = {}

    def reference(env: dict[str, str]) -> RawOrt:
        """Raw ORT with the runners and threads the service will use under these settings."""
        threads, runners = service_threads(env)
        if (threads, runners) not in references:
            references[threads, runners] = RawOrt(version_dir, threads, runners, args.raw_seconds)
        return references[threads, runners]

    raw = reference(extra_env)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in args.servers:
        spec = SERVERS[name]
        env = {"GAN_MODEL_DIR": str(args.model_dir)} | extra_env | spec.get("env", {})
        module = [part.format(model=args.model) for part in spec["module"]] if "module" in spec else None
        if module and "--model" in module:
            module += ["--model-dir", str(args.model_dir)]
        with running_service(env, module=module) as (url, process):
            rows += sweep(
                name, url, process.pid, args.model, args, reference(env) if module is None else None
            )
    summary = gains(rows)
    tax = low_load_tax(rows, raw)
    if tax:
        print(f"\nlow load (1 client, n=1, npy): service p50 {tax['service_p50_ms']} ms; bare HTTP p50 "
              f"{tax['http_p50_ms']} ms + direct ORT call {tax['ort_ms']} ms -> tax {tax['tax_ms']} ms")  # fmt: skip
    print(f"\n{'format':>6} {'n':>4} {'clients':>7} {'batching gain':>14} {'vs naive':>9} {'vs untuned':>11}")
    for g in summary:
        print(f"{g['format']:>6} {g['n']:>4} {g['concurrency']:>7} {g['batching_gain']!s:>14} {g['vs_naive']!s:>9} "
              f"{g['vs_untuned']!s:>11}")  # fmt: skip
    print(f"sweep took {time.perf_counter() - started:.0f} s")
    if args.plots:
        for path in plots(rows, args.plots, args.model):
            print(f"wrote {path}")
    if args.json:
        for r in rows:
            r.pop("latencies_ms", None)
        report = {"machine": machine(), "model": args.model, "version": int(version_dir.name),
                  "references": [{"threads": t, "runners": r} for t, r in references], "env": extra_env, "points": rows,
                  "gains": summary, "low_load": tax}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
